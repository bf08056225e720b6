"""Numba kernels, every one `@njit(cache=True)`: the conv primitives and their registry (conv.py),
batch norm, activations, the runtime's fused and sparse kernels, Huffman bit decoding, and LLVM
vector intrinsics (simd.py). Arrays in, arrays out; imports only the ground floor.
"""
