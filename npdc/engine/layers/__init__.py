"""Layers with explicit forward and backward passes, one concept a module, every one following
npdc.engine.layers.base.Layer (build, forward, backward adding into grads). Layers call kernels for
their arithmetic and import nothing above the engine."""

from npdc.engine.layers.activation import Clip, PReLU, ReLU
from npdc.engine.layers.base import Layer
from npdc.engine.layers.batchnorm import BatchNorm2d
from npdc.engine.layers.concat import Concat, Dropout
from npdc.engine.layers.conv import Conv2d
from npdc.engine.layers.linear import Flatten, Linear
from npdc.engine.layers.pool import AvgPool2d, GlobalAvgPool, MaxPool2d
from npdc.engine.layers.residual import Add, ZeroPadShortcut

__all__ = ["Layer", "Conv2d", "BatchNorm2d", "ReLU", "PReLU", "MaxPool2d", "AvgPool2d",
           "GlobalAvgPool", "Linear", "Flatten", "Add", "ZeroPadShortcut",
           "Clip", "Concat", "Dropout"]
