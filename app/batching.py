"""Micro-batching of concurrent /v1/explain requests into one batched forward/backward.

Requests wait in an asyncio queue; one loop takes the first, collects more for up to
`max_wait_ms` (or until `max_batch`), and runs them with `Explainer.explain_many` on the
model thread. While a batch runs, new requests queue up, so under load batches fill by
themselves; alone, a request waits at most `max_wait_ms`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any

from exemplar.errors import ExemplarError
from exemplar.options import ExplainOptions
from exemplar.results import Explanation
from exemplar.tasks import Example

Request = tuple[Example, ExplainOptions]
RunBatch = Callable[[Sequence[Request]], list[Explanation | ExemplarError]]


class MicroBatcher:
    def __init__(
        self,
        run_batch: RunBatch,
        executor: Executor,
        max_batch: int,
        max_wait_ms: float,
        on_batch: Callable[[int], None] = lambda size: None,
    ) -> None:
        self.run_batch = run_batch
        self.executor = executor
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1e3
        self.on_batch = on_batch
        self._queue: asyncio.Queue[tuple[Example, ExplainOptions, asyncio.Future[Any]]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def submit(self, query: Example, options: ExplainOptions) -> Explanation:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        await self._queue.put((query, options, future))
        result = await future
        if isinstance(result, ExemplarError):
            raise result
        explanation: Explanation = result
        return explanation

    async def _collect(self) -> list[tuple[Example, ExplainOptions, asyncio.Future[Any]]]:
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        deadline = loop.time() + self.max_wait_s
        while len(batch) < self.max_batch:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            live = [item for item in batch if not item[2].done()]  # a cancelled client no longer waits
            if not live:
                continue
            self.on_batch(len(live))
            try:
                results = await loop.run_in_executor(self.executor, self.run_batch, [(q, o) for q, o, _ in live])
            except Exception as exc:
                for _, _, future in live:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, _, future), result in zip(live, results, strict=True):
                if not future.done():
                    future.set_result(result)
