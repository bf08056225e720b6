"""The training and inference engine: layers with explicit forward and backward (layers/), the
Net over them (net.py), the architecture registry (resnet.py), losses, SGD, training, the gradient
checker, and the choice of conv primitive per layer (conv_plan.py, conv_select.py). May import
ground and kernels only; a Net knows nothing of files, datasets or compression.
"""
