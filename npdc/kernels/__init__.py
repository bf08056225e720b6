"""Numba kernels, every one `@njit(cache=True)`: the conv primitives and their registry (conv.py),
batch norm, activations, the runtime's fused and sparse kernels, Huffman bit decoding, and LLVM
vector intrinsics (simd.py). Arrays in, arrays out; imports only the ground floor.

Importing the package makes Numba's cache of every kernel depend on all the kernels' sources
(cache_stamp.py), before any kernel module is compiled or loaded.
"""

from npdc.kernels.cache_stamp import stamp_caches

stamp_caches()
