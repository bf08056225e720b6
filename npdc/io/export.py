"""Export a model's arrays for use outside npdc: one plain array per parameter path (npz), or
a PyTorch state_dict with torchvision's names (torch), or an ONNX model (onnx, npdc.io.onnx_export).

The .npz holds what `Net.state_dict` holds -- `res2a_2a.W`, `res2a_2a_bn.running_var`, ...,
`fc.b`, and the input normalisation `input.mean`, `input.std` -- readable with `np.load` alone
(no pickles). Written atomically, like every npdc output.
"""

import numpy as np

from npdc.atomic import atomic_path
from npdc.io.onnx_export import export_onnx
from npdc.io.torch_import import torch_candidates
from npdc.io.torch_writer import save_torch_state


def export_npz(net, path):
    """Write `net`'s parameters, buffers and normalisation to `path` as an uncompressed .npz."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:  # a file object, so numpy does not append ".npz" to the name
            np.savez(f, **net.state_dict())


def export_torch(net, path):
    """Write `net` as a PyTorch state_dict with torchvision's names, in PyTorch's zip format."""
    save_torch_state(torch_names(net), path)


def torch_names(net):
    """{PyTorch name: array} of a net's parameters and buffers, named as torchvision (or the CIFAR
    ResNet code) names them -- the first name npdc.io.torch_import would look for -- with the
    `num_batches_tracked` counter PyTorch's batch norms carry (zero), so that a strict
    `load_state_dict` finds every key it expects."""
    state = {}
    for path, arr in {**net.params(), **net.buffers()}.items():
        name = torch_candidates(path)[0]
        state[name] = arr
        if path.endswith(".running_var"):
            state[name.rsplit(".", 1)[0] + ".num_batches_tracked"] = np.zeros((), np.int64)
    return state


EXPORTERS = {"npz": export_npz, "torch": export_torch, "onnx": export_onnx}
