"""Compression algorithms on a Net, each a pure function or a small object: prune criteria (prune.py),
gradual pruning (agp.py), sensitivity sweeps (sensitivity.py), distillation (distill.py), quantizers
and centroid training (quantize.py), filter thinning (thin.py). May import ground, kernels, engine
and io; writing files and chaining stages belong to codec and pipeline above.
"""
