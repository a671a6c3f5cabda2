"""Micro-batching for a model server: concurrent requests are queued, gathered into one batch (up to
`max_batch` items, or what arrived within `max_wait` seconds of the oldest), run together in one worker
thread, and each request gets its own slice of the results back.

The event loop only queues and scatters; the model runs in the batcher's single thread, so it is never
used by two threads at once and never blocks the loop. Other work on the same model (text generation)
goes through `run_alone`, on the same thread.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")
Out = TypeVar("Out")


@dataclass
class _Request(Generic[Item, Result]):
    items: list[Item]
    future: asyncio.Future[list[Result]]
    queued: float = field(default_factory=time.monotonic)


@dataclass
class BatchStats:
    """What the batcher has run so far: `sizes` maps a batch's item count to how many batches had it."""

    requests: int = 0
    items: int = 0
    batches: int = 0
    sizes: Counter[int] = field(default_factory=Counter)

    def record(self, requests: int, items: int) -> None:
        self.requests += requests
        self.items += items
        self.batches += 1
        self.sizes[items] += 1


class MicroBatcher(Generic[Item, Result]):
    """Runs `run_batch(items) -> results` (one result per item, in order) on batches of concurrent requests."""

    def __init__(self, run_batch: Callable[[list[Item]], list[Result]], max_batch: int, max_wait: float) -> None:
        if max_batch < 1 or max_wait < 0:
            raise ValueError("max_batch must be at least 1 and max_wait not negative")
        self.run_batch, self.max_batch, self.max_wait = run_batch, max_batch, max_wait
        self.stats = BatchStats()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="graftune-model")
        self._queue: asyncio.Queue[_Request[Item, Result]] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._held: _Request[Item, Result] | None = None  # did not fit the last batch; opens the next

    async def submit(self, items: list[Item]) -> list[Result]:
        """The results of `items` (at most `max_batch` of them), run in a batch with other requests'."""
        if not 1 <= len(items) <= self.max_batch:
            raise ValueError(f"a request holds 1 to {self.max_batch} items, not {len(items)}")
        loop = asyncio.get_running_loop()
        if self._queue is None or self._loop is not loop or self._worker is None or self._worker.done():
            # Started on first use, on the loop that serves: an app driven without lifespan events (an
            # in-process test client) batches as uvicorn's does.
            self._queue, self._loop, self._held = asyncio.Queue(), loop, None
            self._worker = loop.create_task(self._gather_and_run(self._queue))
        request: _Request[Item, Result] = _Request(items, loop.create_future())
        await self._queue.put(request)
        return await request.future

    async def run_alone(self, work: Callable[[], Out]) -> Out:
        """`work()` on the model's thread, between batches."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, work)

    async def close(self) -> None:
        """Stop gathering and let the model thread finish what it runs."""
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        self._thread.shutdown(wait=True)

    async def _gather_and_run(self, queue: asyncio.Queue[_Request[Item, Result]]) -> None:
        while True:
            batch = await self._gather(queue)
            live = [r for r in batch if not r.future.done()]  # a client that went away is not waited for
            if live:
                await self._run(live)

    async def _gather(self, queue: asyncio.Queue[_Request[Item, Result]]) -> list[_Request[Item, Result]]:
        """The oldest waiting request and those that join it before the batch is full or its wait is over.
        The wait counts from when the oldest was queued: requests that queued while the last batch ran go
        at once."""
        first, self._held = self._held or await queue.get(), None
        batch, count = [first], len(first.items)
        deadline = first.queued + self.max_wait
        while count < self.max_batch:
            left = deadline - time.monotonic()
            try:
                following = queue.get_nowait() if left <= 0 else await asyncio.wait_for(queue.get(), left)
            except (asyncio.QueueEmpty, TimeoutError):
                break
            if count + len(following.items) > self.max_batch:
                self._held = following
                break
            batch.append(following)
            count += len(following.items)
        return batch

    async def _run(self, batch: list[_Request[Item, Result]]) -> None:
        items = [item for request in batch for item in request.items]
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self._thread, self.run_batch, items)
        except Exception as error:
            if len(batch) == 1:
                if not batch[0].future.done():
                    batch[0].future.set_exception(error)
                return
            # One request's input failed the batch: run each alone, so the error reaches only its sender.
            for request in batch:
                await self._run([request])
            return
        self.stats.record(len(batch), len(items))
        start = 0
        for request in batch:
            if not request.future.done():
                request.future.set_result(results[start:start + len(request.items)])
            start += len(request.items)

