"""Dynamic micro-batching: concurrent predicts for one model version share one engine call."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import Histogram

from shared.errors import ModelServeError, ServiceUnavailable

logger = logging.getLogger("modelserve.inference.batching")

Records = list[dict[str, Any]]

_POWERS_OF_TWO = tuple(float(2**i) for i in range(11))  # 1, 2, 4, … 1024

# Module level on purpose: prometheus_client refuses a second registration of the same name.
BATCH_SIZE = Histogram(
    "modelserve_batch_size",
    "Records sent to the engine per engine call.",
    ["model"],
    buckets=_POWERS_OF_TWO,
)
BATCH_REQUESTS = Histogram(
    "modelserve_batch_requests",
    "Requests coalesced into one engine call.",
    ["model"],
    buckets=_POWERS_OF_TWO,
)

_INLINE_MAX_RECORDS = 32
_INLINE_MAX_SECONDS = 0.0003
"""Small batches of an engine whose recent calls took less than this run on the event loop."""


@dataclass(slots=True)
class _Request:
    records: Records
    future: asyncio.Future[Records]


class MicroBatcher:
    """Coalesces concurrent `submit` calls for one model version into single engine calls.

    Policy (adaptive, so a lone caller pays nothing and a busy model batches well):

    - Idle (no batch ran within the last `max_batch_delay_ms`): a request runs at once, together
      with any that arrived in the same event-loop turn (e.g. `asyncio.gather`).
    - Busy: requests arriving while a batch runs are queued. After a batch, the next one waits at
      most `max_batch_delay_ms` to fill, ending early once it holds `max_batch_size` records or as
      many requests as the last round had (the batch just answered plus those queued meanwhile:
      callers just answered often come straight back). At concurrency 1 that wait ends as soon as
      the caller's next request arrives, so it adds no delay.
    - One batch runs at a time per batcher; it takes whole requests in arrival order up to
      `max_batch_size` records. A request larger than `max_batch_size` is neither split nor
      queued: it runs alone, at once, beside the batches.

    `predict` (blocking, e.g. `Runtime.predict`) runs in a worker thread. If a combined call
    raises, the batch is split in halves and retried until each failing request runs alone, so
    a bad request fails only its own caller (with its own exception) and the others get answers.
    """

    def __init__(
        self,
        predict: Callable[[Records], Records],
        *,
        max_batch_size: int,
        max_batch_delay_ms: float,
        name: str = "",
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if max_batch_delay_ms < 0:
            raise ValueError("max_batch_delay_ms must not be negative")
        self.name = name
        self.max_batch_size = max_batch_size
        self.max_batch_delay = max_batch_delay_ms / 1000.0
        self._predict = predict
        self._queue: deque[_Request] = deque()
        self._queued_records = 0
        # Resolved by `submit`/`close` to wake the worker. A bare future rather than Event + timeout:
        # this is paid once per request at concurrency 1, and it is the cheapest wake-up asyncio has.
        self._waiter: asyncio.Future[None] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._closed = False
        self._batch_size = BATCH_SIZE.labels(model=name)
        self._engine_ema = _INLINE_MAX_SECONDS  # unknown until measured: the first calls use a thread
        self._batch_requests = BATCH_REQUESTS.labels(model=name)

    async def submit(self, records: Records) -> Records:
        """Predict `records` (already validated), possibly together with other callers' records.

        Returns exactly one answer per record, in order, or raises what `predict` raised on them.
        """
        if self._closed:
            raise ServiceUnavailable(f"Model {self.name or '(unnamed)'} is shutting down")
        if not records:
            return []
        if len(records) > self.max_batch_size:
            return await self._call_engine(records, requests=1)
        future: asyncio.Future[Records] = asyncio.get_running_loop().create_future()
        self._queue.append(_Request(records, future))
        self._queued_records += len(records)
        self._ensure_worker()
        self._wake()
        # A cancelled caller cancels its future; the worker then skips (or ignores the answer to) it.
        return await future

    def submit_many(self, batches: list[Records]) -> list[asyncio.Future[Records]]:
        """`submit` for several callers at once (the gateway's coalesced requests): one future per entry.

        Queued together in order and woken once, without a task per caller; each future gets that caller's
        answers or its own exception, exactly as `submit` would.
        """
        if self._closed:
            raise ServiceUnavailable(f"Model {self.name or '(unnamed)'} is shutting down")
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Records]] = []
        queued = False
        for records in batches:
            if len(records) > self.max_batch_size or not records:
                futures.append(asyncio.ensure_future(self.submit(records)))
                continue
            future: asyncio.Future[Records] = loop.create_future()
            self._queue.append(_Request(records, future))
            self._queued_records += len(records)
            futures.append(future)
            queued = True
        if queued:
            self._ensure_worker()
            self._wake()
        return futures

    async def close(self) -> None:
        """Refuse new requests, answer those already queued, then stop the background task."""
        self._closed = True
        self._wake()
        worker, self._worker = self._worker, None
        if worker is not None and not worker.done():
            await worker

    def _ensure_worker(self) -> None:
        # Started lazily: the batcher may be built outside a running event loop.
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._work(), name=f"micro-batcher:{self.name}")

    async def _work(self) -> None:
        # Requests the next batch is expected to hold: the last round's callers, who often come straight
        # back. 0 means idle: the next request runs at once.
        expected = 0
        try:
            while True:
                if self._closed and not self._queue:
                    return
                if expected:
                    await self._fill(expected)
                    if not self._queue:  # nobody came back within the delay: idle
                        expected = 0
                        continue
                elif not self._queue:
                    await self._sleep(None)
                    continue
                batch = self._take_batch()
                if batch:
                    await self._run_batch(batch)
                    # Those answered plus those who queued meanwhile: the callers in flight right now.
                    expected = len(batch) + len(self._queue)
        finally:
            # Cancelled (event loop shutting down): no caller may wait forever.
            while self._queue:
                self._queue.popleft().future.cancel()
            self._queued_records = 0

    async def _fill(self, expected: int) -> None:
        """Wait up to the batch delay for `expected` requests or `max_batch_size` records to be queued."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_batch_delay
        while len(self._queue) < expected and self._queued_records < self.max_batch_size and not self._closed:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            await self._sleep(remaining)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _sleep(self, timeout: float | None) -> None:
        """Until `_wake` is called or `timeout` seconds pass."""
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(timeout, _resolve, waiter) if timeout is not None else None
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def _take_batch(self) -> list[_Request]:
        """Whole requests from the head of the queue, in order, up to `max_batch_size` records."""
        batch: list[_Request] = []
        total = 0
        while self._queue:
            request = self._queue[0]
            size = len(request.records)
            if request.future.done():  # its caller gave up while it was queued
                self._queue.popleft()
                self._queued_records -= size
                continue
            if total + size > self.max_batch_size:
                break
            self._queue.popleft()
            self._queued_records -= size
            batch.append(request)
            total += size
        return batch

    async def _run_batch(self, batch: list[_Request]) -> None:
        """Run `batch` as one engine call, bisecting on failure so each failing request fails alone."""
        records = [record for request in batch for record in request.records]
        try:
            answers = await self._call_engine(records, requests=len(batch))
        except asyncio.CancelledError:
            for request in batch:
                request.future.cancel()
            raise
        except Exception as exc:
            if len(batch) == 1:
                _set_exception(batch[0].future, exc)
                return
            logger.debug("batch of %d requests failed for %s, splitting: %r", len(batch), self.name, exc)
            # Halves rather than one call per request: k bad requests cost O(k log n) calls, not n.
            live = [request for request in batch if not request.future.done()]
            middle = len(live) // 2
            for half in (live[:middle], live[middle:]):
                if half:
                    await self._run_batch(half)
            return
        offset = 0
        for request in batch:
            size = len(request.records)
            _set_result(request.future, answers[offset : offset + size])
            offset += size

    def _observe(self, seconds: float) -> None:
        # An engine that turns slow (a bigger batch, a cold JVM) goes back to the thread at once.
        self._engine_ema = seconds if seconds > _INLINE_MAX_SECONDS else 0.8 * self._engine_ema + 0.2 * seconds

    async def _call_engine(self, records: Records, *, requests: int) -> Records:
        self._batch_size.observe(len(records))
        self._batch_requests.observe(requests)
        if len(records) <= _INLINE_MAX_RECORDS and self._engine_ema < _INLINE_MAX_SECONDS:
            # A thread hop (~60 µs) costs more than a small model's whole call: run it on the loop.
            start = time.perf_counter()
            answers = self._predict(records)
            self._observe(time.perf_counter() - start)
        else:
            start = time.perf_counter()
            answers = await asyncio.to_thread(self._predict, records)
            if len(records) <= _INLINE_MAX_RECORDS:
                self._observe(time.perf_counter() - start)
        if len(answers) != len(records):
            raise ModelServeError(f"The engine returned {len(answers)} answers for {len(records)} records")
        return answers


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


# A future already done was cancelled by its caller meanwhile: nobody wants the answer.
def _set_result(future: asyncio.Future[Records], answers: Records) -> None:
    if not future.done():
        future.set_result(answers)


def _set_exception(future: asyncio.Future[Records], exc: Exception) -> None:
    if not future.done():
        future.set_exception(exc)
