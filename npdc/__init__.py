"""npdc: NumPy Deep Compression, a framework-free toolkit that makes trained ResNets small.

Two thread pools share the cores here: OpenBLAS (numpy's matmul) and Numba's OpenMP workers.
Both spin-wait after a call by default, and on a 2-core machine each pool's spinning steals the
cores the other needs (measured: a 3x3 conv ran 5-8x slower). Passive waiting is set before
numpy or numba is loaded, unless the user has chosen otherwise.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

__version__ = "0.1.0"
