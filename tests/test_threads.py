"""The BLAS thread cap of the serving processes."""

import torch
from threadpoolctl import threadpool_info, threadpool_limits

from exemplar.threads import limit_blas_threads


def blas_threads() -> list[int]:
    return [info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"]


def test_limit_blas_threads_caps_numpy_blas_and_leaves_torch_alone() -> None:
    torch_threads = torch.get_num_threads()
    with threadpool_limits(limits=2, user_api="blas"):  # a known start; restored after the test
        assert blas_threads()
        assert all(n == 2 for n in blas_threads())
        limit_blas_threads()
        assert all(n == 1 for n in blas_threads())
        limit_blas_threads(2)
        assert all(n == 2 for n in blas_threads())
    assert torch.get_num_threads() == torch_threads
