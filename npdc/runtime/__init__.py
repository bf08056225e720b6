"""Inference straight from a .npdc file with little memory: plan.py (BN folding, fused tails,
liveness arena), weights.py (dense / stream / sparse / auto weight stores), program.py (the plan
lowered to layer records for the compiled walk of npdc.kernels.walk, each layer's kernel picked
by measured time), infer.py (the Runtime that executes a plan, compiled or walked from Python)
and measure.py (peak memory and latency of a run). May import every floor up to codec; the
figures of a whole file (accuracy, score) are in npdc.evaluate above.
"""
