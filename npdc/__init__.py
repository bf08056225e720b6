"""npdc: NumPy Deep Compression, a framework-free toolkit that makes trained ResNets small.

Two thread pools share the cores here: OpenBLAS (numpy's matmul) and Numba's OpenMP workers.
Both spin-wait after a call by default, and on a 2-core machine each pool's spinning steals the
cores the other needs (measured: a 3x3 conv ran 5-8x slower). So OpenBLAS's workers hardly spin
and OpenMP's wait passively, except that GNU OpenMP's spin count is set short rather than zero:
a network runs hundreds of parallel loops in a row, and waking sleeping workers for each one
cost cifar-resnet20 a tenth of its training speed and doubled its batch-1 latency (measured).
All of this is set before numpy or numba is loaded, unless the user has chosen otherwise.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("GOMP_SPINCOUNT", "30000")  # a tenth of GNU OpenMP's default without a policy
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

__version__ = "0.1.0"
