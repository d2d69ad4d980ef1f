"""Threads in a serving process: the numeric libraries' thread pools, and the model's lock.

`FairLock` serialises model work (PyTorch autograd on one shared model is not thread-safe)
first come, first served: a thread that releases it and asks again queues behind those
already waiting, so a long request that takes the model in many short holds cannot starve a
short one (a plain `threading.Lock` lets the releasing thread win again and again).

numpy's BLAS (OpenBLAS) starts one thread per core and keeps them spinning between calls.
The selection code makes many small BLAS calls (Gram matrices, pseudo-inverses of a few
rows); when another process or torch's own threads are busy on the same cores, those
spinning threads fight them: beside a busy process `reconstruct` ran 3.9x / 6.1x slower in
`benchmarks/blas_threads.py` than with one BLAS thread, which costs nothing measurable on an
idle machine. torch's thread pool (OpenMP) is separate and not affected.
"""

import contextlib
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from types import TracebackType

import numpy as np
import numpy.typing as npt
from threadpoolctl import threadpool_limits

from exemplar.errors import DeadlineExceededError

BLAS_THREADS = 1
"""Default size of numpy's BLAS thread pool in the API and worker processes."""


def limit_blas_threads(threads: int = BLAS_THREADS) -> None:
    """Cap numpy's BLAS thread pool at ``threads`` for the whole process (kept across forks)."""
    threadpool_limits(limits=threads, user_api="blas")


class FairLock:
    """A lock granted in the order it was asked for (FIFO); use it as a context manager."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._queue: deque[int] = deque()
        self._held = False

    def __enter__(self) -> None:
        me = threading.get_ident()
        with self._cond:
            self._queue.append(me)
            while self._held or self._queue[0] != me:
                self._cond.wait()
            self._queue.popleft()
            self._held = True

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        with self._cond:
            self._held = False
            self._cond.notify_all()


HEAVY_MAX_WAIT_S = 2.0
"""Longest a heavy step waits for light work at one checkpoint: under a steady stream of light
requests heavy ones still move on, one slice at least every this many seconds."""

HEAVY_SLICE_S = 0.05
"""Heavy work runs on through checkpoints for this long after it last found no light work (or
last waited) before it waits for light work: a light request that arrives meanwhile shares the
cores with it for at most this long plus one step, and a heavy request moves on by a slice in
each gap between light requests, however finely it is cut into steps."""


class Priority:
    """Light work first: while any light work runs, heavy work waits at its next `checkpoint` once
    its current slice (`HEAVY_SLICE_S`) is spent.

    The API marks its model lane's work light and its heavy lane's work heavy (`light_work`,
    `heavy_work`); the core calls `checkpoint` between steps of long computations (greedy steps,
    layers of full-space products, before taking the model). A checkpoint is never inside a
    hold of the model lock, so a waiting heavy thread never blocks a light one. Outside the API
    (no work marked heavy) a checkpoint returns at once.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._light = 0
        self._local = threading.local()

    @contextlib.contextmanager
    def light_work(self) -> Iterator[None]:
        with self._cond:
            self._light += 1
        try:
            yield
        finally:
            with self._cond:
                self._light -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def heavy_work(self, timeout_s: float | None = None) -> Iterator[None]:
        """Mark this thread's work heavy; with `timeout_s`, a checkpoint past that many seconds
        raises `DeadlineExceededError` (the work stops at its next step)."""
        self._local.heavy = True
        self._local.running_since = time.monotonic()  # the start of its current slice
        self._local.deadline = time.monotonic() + timeout_s if timeout_s else None
        self._local.timeout_s = timeout_s
        try:
            yield
        finally:
            self._local.heavy = False
            self._local.deadline = None

    def is_heavy(self) -> bool:
        """Whether this thread runs heavy work (its timings include waits for light work)."""
        return bool(getattr(self._local, "heavy", False))

    def checkpoint(self) -> None:
        deadline = getattr(self._local, "deadline", None)
        if deadline is not None and time.monotonic() > deadline:
            timeout_s = self._local.timeout_s
            raise DeadlineExceededError(
                f"the request ran past its deadline of {timeout_s:g} s and was stopped: ask for less (a smaller "
                "pool_size, fewer strategies or ks) or submit it as a batch job (POST /v1/jobs)",
                retry_after=max(1, round(timeout_s)),
            )
        if self.is_heavy():
            now = time.monotonic()
            with self._cond:
                if not self._light:
                    self._local.running_since = now  # nothing to make way for: a fresh slice
                    return
                if now - self._local.running_since < HEAVY_SLICE_S:
                    return  # the rest of this slice first
                deadline = now + HEAVY_MAX_WAIT_S
                while self._light and (left := deadline - time.monotonic()) > 0:
                    self._cond.wait(left)
            self._local.running_since = time.monotonic()


HEAVY_NICE = 10
"""How much lower the OS schedules the heavy lane's thread (`lower_thread_priority`): at nice 10
against 0 it gets about a tenth of a contended core, so a step it cannot interrupt (a QR
factorisation, one layer's products) slows light requests little."""


def lower_thread_priority(nice: int = HEAVY_NICE) -> None:
    """Lower the calling thread's scheduling priority by `nice` (Linux schedules threads on their
    own; threads it starts later, such as torch's, inherit it). It cannot be raised back without
    privileges: use it for a thread that only ever runs low-priority work. Elsewhere, a no-op."""
    if not hasattr(os, "setpriority"):
        return
    tid = threading.get_native_id()
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))


HEAVY_TORCH_THREADS = 1
"""torch threads of the heavy lane's thread (torch's OpenMP thread count is per calling thread):
heavy work uses at most one core's worth of torch threads while light work runs beside it."""


def start_heavy_thread() -> None:
    """Initializer of the API's heavy lane thread: a lower OS priority (`lower_thread_priority`) and
    `HEAVY_TORCH_THREADS` torch threads for it alone."""
    import torch

    lower_thread_priority()
    torch.set_num_threads(HEAVY_TORCH_THREADS)


PRIORITY = Priority()
"""The process's one priority gate (threads of one process share the cores it arbitrates)."""


HEAVY_HOLD_ROWS = 4
"""Heavy work runs the model on at most this many examples per hold of the model lock (one
forward/backward of 4 tweets is about a tenth of a second here), so a light request that arrives
while heavy work holds the model waits for at most that."""


Hold = Callable[[], AbstractContextManager[None]]
"""A hold of the model: a context manager factory (`Explainer.hold_model`, or `contextlib.nullcontext`)."""


def rows_per_hold(rows: int) -> int:
    """How many of `rows` examples to run through the model per hold: all of them for light work,
    at most `HEAVY_HOLD_ROWS` for heavy work."""
    return max(1, min(rows, HEAVY_HOLD_ROWS)) if PRIORITY.is_heavy() else rows


def per_hold(batches: Iterable[list[int]]) -> list[list[int]]:
    """`batches` (lists of positions) cut to `rows_per_hold` each: unchanged for light work."""
    out: list[list[int]] = []
    for batch in batches:
        step = rows_per_hold(len(batch))
        out.extend(batch[i : i + step] for i in range(0, len(batch), step))
    return out


def checkpoint() -> None:
    """Where heavy work lets light work go first (`Priority`); free outside the API's heavy lane."""
    PRIORITY.checkpoint()


PRODUCT_BLOCK_ROWS = 256
"""`products` multiplies this many rows at a time, with a `checkpoint` before each block: 256 rows
against 2,000 of 2,432 dims is about a tenth of a second on one core here, so a pool's pairwise
products do not keep light requests waiting behind one long step."""


def row_blocks(rows: int) -> Iterator[slice]:
    """Slices of `PRODUCT_BLOCK_ROWS` rows covering ``range(rows)``, a `checkpoint` before each (after
    the first): split independent per-row work so light work can go between blocks."""
    for start in range(0, rows, PRODUCT_BLOCK_ROWS):
        if start:
            checkpoint()
        yield slice(start, start + PRODUCT_BLOCK_ROWS)


def products(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64] | None = None) -> npt.NDArray[np.float64]:
    """``a @ b.T`` (``b`` defaults to ``a``), in blocks of rows of ``a`` (`row_blocks`): the same
    values as one product, in steps light work can go between."""
    b = a if b is None else b
    if a.shape[0] <= PRODUCT_BLOCK_ROWS:
        return np.asarray(a @ b.T, dtype=np.float64)
    out = np.empty((a.shape[0], b.shape[0]), dtype=np.float64)
    for rows in row_blocks(a.shape[0]):
        out[rows] = a[rows] @ b.T
    return out
