"""Export a model's arrays for use outside npdc: one plain array per parameter path.

The .npz holds what `Net.state_dict` holds -- `res2a_2a.W`, `res2a_2a_bn.running_var`, ...,
`fc.b`, and the input normalisation `input.mean`, `input.std` -- readable with `np.load` alone
(no pickles). Written atomically, like every npdc output.
"""

import numpy as np

from npdc.atomic import atomic_path


def export_npz(net, path):
    """Write `net`'s parameters, buffers and normalisation to `path` as an uncompressed .npz."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:  # a file object, so numpy does not append ".npz" to the name
            np.savez(f, **net.state_dict())


EXPORTERS = {"npz": export_npz}
