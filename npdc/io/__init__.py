"""Files in and out that are not .npdc: datasets (IDX, CIFAR batches, .npz, .h5), model files
(.h5), PyTorch checkpoints through a restricted unpickler, and plain-array export. May import
ground, kernels and engine; every byte it reads is treated as hostile and refused in one line.
"""
