"""The BLAS thread cap of the serving processes."""

import pytest
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


def test_fair_lock_is_granted_in_the_order_asked_even_to_a_thread_that_just_released_it() -> None:
    import threading
    import time

    from exemplar.threads import FairLock

    lock = FairLock()
    order: list[str] = []
    waiting = threading.Event()

    def take(name: str) -> None:
        with lock:
            order.append(name)

    def greedy() -> None:  # holds, then asks again at once: must queue behind "light"
        with lock:
            order.append("greedy-1")
            waiting.wait(5)
            time.sleep(0.2)  # "light" is waiting on the lock by now
        with lock:
            order.append("greedy-2")

    first = threading.Thread(target=greedy)
    first.start()
    while not order:
        time.sleep(0.01)
    light = threading.Thread(target=take, args=("light",))
    light.start()
    waiting.set()
    first.join(10)
    light.join(10)
    assert order == ["greedy-1", "light", "greedy-2"]


def test_heavy_work_waits_at_its_checkpoints_while_light_work_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    import exemplar.threads as threads

    monkeypatch.setattr(threads, "HEAVY_MAX_WAIT_S", 60.0)
    monkeypatch.setattr(threads, "HEAVY_SLICE_S", 0.0)
    gate = threads.Priority()
    events: list[str] = []
    light_in, light_out, heavy_at_checkpoint = threading.Event(), threading.Event(), threading.Event()

    def light() -> None:
        with gate.light_work():
            light_in.set()
            light_out.wait(10)
            events.append("light done")

    def heavy() -> None:
        with gate.heavy_work():
            light_in.wait(10)
            heavy_at_checkpoint.set()
            gate.checkpoint()
            events.append("heavy step")

    threads_ = [threading.Thread(target=light), threading.Thread(target=heavy)]
    for t in threads_:
        t.start()
    heavy_at_checkpoint.wait(10)
    light_out.set()
    for t in threads_:
        t.join(10)
    assert events == ["light done", "heavy step"]
    gate.checkpoint()  # not heavy work: returns at once


def test_heavy_work_finishes_its_slice_before_it_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Heavy work passes checkpoints for `HEAVY_SLICE_S` after it last found no light work, then
    waits for light work; finding none starts a fresh slice."""
    import time

    import exemplar.threads as threads

    monkeypatch.setattr(threads, "HEAVY_MAX_WAIT_S", 0.2)
    monkeypatch.setattr(threads, "HEAVY_SLICE_S", 0.5)
    gate = threads.Priority()
    with gate.heavy_work():
        with gate.light_work():
            t0 = time.monotonic()
            gate.checkpoint()  # within the slice begun by heavy_work: no wait
            assert time.monotonic() - t0 < 0.1
            time.sleep(0.5)
            t0 = time.monotonic()
            gate.checkpoint()  # the slice is spent and light work runs: waits (here its 0.2 s most)
            assert time.monotonic() - t0 >= 0.19
            t0 = time.monotonic()
            gate.checkpoint()  # a fresh slice after the wait
            assert time.monotonic() - t0 < 0.1
        time.sleep(0.6)
        gate.checkpoint()  # no light work: a fresh slice
        with gate.light_work():
            t0 = time.monotonic()
            gate.checkpoint()
            assert time.monotonic() - t0 < 0.1


def test_heavy_work_past_its_deadline_stops_at_the_next_checkpoint() -> None:
    from exemplar.errors import DeadlineExceededError
    from exemplar.threads import Priority

    gate = Priority()
    with gate.heavy_work(timeout_s=60):
        gate.checkpoint()  # well within the deadline
    with gate.heavy_work(timeout_s=1e-9), pytest.raises(DeadlineExceededError, match="batch job") as stopped:
        gate.checkpoint()
    assert stopped.value.retry_after == 1
    gate.checkpoint()  # the deadline ended with the heavy work


def test_lowering_a_threads_priority_leaves_the_others_alone() -> None:
    """The API's heavy lane runs at a lower OS priority (nice +10); only that thread is lowered."""
    import os
    import threading

    from exemplar.threads import HEAVY_NICE, lower_thread_priority

    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    seen: list[int] = []

    def lowered() -> None:
        lower_thread_priority()
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    t = threading.Thread(target=lowered)
    t.start()
    t.join()
    assert seen == [min(19, mine + HEAVY_NICE)]
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == mine


def test_the_heavy_lane_thread_gets_one_torch_thread_and_the_others_keep_theirs() -> None:
    import threading

    from exemplar.threads import HEAVY_TORCH_THREADS, start_heavy_thread

    before = torch.get_num_threads()
    seen: list[int] = []

    def heavy() -> None:
        start_heavy_thread()
        seen.append(torch.get_num_threads())

    t = threading.Thread(target=heavy)
    t.start()
    t.join()
    assert seen == [HEAVY_TORCH_THREADS]
    assert torch.get_num_threads() == before
