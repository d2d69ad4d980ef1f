"""Thread pools of the numeric libraries in a serving process.

numpy's BLAS (OpenBLAS) starts one thread per core and keeps them spinning between calls.
The selection code makes many small BLAS calls (Gram matrices, pseudo-inverses of a few
rows); when another process or torch's own threads are busy on the same cores, those
spinning threads fight them: beside a busy process `reconstruct` ran 3.9x / 6.1x slower in
`benchmarks/blas_threads.py` than with one BLAS thread, which costs nothing measurable on an
idle machine. torch's thread pool (OpenMP) is separate and not affected.
"""

from threadpoolctl import threadpool_limits

BLAS_THREADS = 1
"""Default size of numpy's BLAS thread pool in the API and worker processes."""


def limit_blas_threads(threads: int = BLAS_THREADS) -> None:
    """Cap numpy's BLAS thread pool at ``threads`` for the whole process (kept across forks)."""
    threadpool_limits(limits=threads, user_api="blas")
