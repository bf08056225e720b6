"""What a command's jobs share, read from paths: a model and the images it is judged on.

`model_and_images` is the loader of a npdc.jobs.Loaded recipe (`--share files`): each worker of
a cluster that sees the client's files reads the model and dataset itself, and gets exactly the
arrays that the client would have sent. The model's reader comes in as an argument: a .npdc file
is decoded by npdc.codec, a floor above this one (the recipe names npdc.api.load_model).
"""

import os

from npdc.io.datasets import load_dataset


def evaluation_images(data, split, size=None):
    """(x, y) a model is judged on: the test split, or the last `size` training images."""
    if split == "test":
        return data.require("test")
    x, y = data.require("train")
    return x[-size:], y[-size:]


def model_and_images(load_model, model, data, split, size=None, resize=None):
    """(net, x, y) from a model file read by `load_model` (a picklable function of its path) and
    a dataset (a path or a shipped name; an image folder's images made for the model, their
    shorter side `resize` when given)."""
    net = load_model(model)
    return net, *evaluation_images(load_dataset(data, resize=resize).fit_to(net.in_shape), split, size)


def absolute(spec):
    """A path as the workers must get it (absolute: their working folder differs); a shipped
    dataset's name is left as it is."""
    return os.path.abspath(spec) if os.path.exists(spec) else spec
