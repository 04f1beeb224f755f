"""MicroBatcher: coalescing, per-caller slices, size bound, oversized requests, failure isolation, close."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from prometheus_client import REGISTRY

from inference.batching import MicroBatcher
from shared.errors import ModelServeError, ServiceUnavailable

Records = list[dict[str, Any]]


class FakeModel:
    """A blocking predict that records every engine call; records with `bad` make it raise."""

    def __init__(self) -> None:
        self.calls: list[Records] = []
        self._lock = threading.Lock()
        self.gate: threading.Event | None = None
        self.started = threading.Event()

    def predict(self, records: Records) -> Records:
        with self._lock:
            self.calls.append(list(records))
        self.started.set()
        if self.gate is not None:
            # Keeps this engine call running until the test lets it go.
            assert self.gate.wait(10)
        for record in records:
            if record.get("bad"):
                raise ValueError(f"bad record {record['id']}")
        return [{"value": record["x"] * 2, "id": record["id"]} for record in records]

    @property
    def sizes(self) -> list[int]:
        return [len(call) for call in self.calls]


def _records(caller: int, count: int) -> Records:
    return [{"id": f"{caller}-{i}", "x": caller * 100 + i} for i in range(count)]


def _expected(records: Records) -> Records:
    return [{"value": record["x"] * 2, "id": record["id"]} for record in records]


@pytest.fixture
def model() -> FakeModel:
    return FakeModel()


async def test_concurrent_callers_share_engine_calls(model: FakeModel) -> None:
    batcher = MicroBatcher(model.predict, max_batch_size=256, max_batch_delay_ms=5, name="t-share")
    inputs = [_records(caller, 1 + caller % 3) for caller in range(50)]
    try:
        results = await asyncio.gather(*(batcher.submit(records) for records in inputs))
    finally:
        await batcher.close()

    assert results == [_expected(records) for records in inputs]
    assert len(model.calls) <= 5
    assert sum(model.sizes) == sum(len(records) for records in inputs)


async def test_requests_arriving_during_a_batch_join_the_next_one(model: FakeModel) -> None:
    model.gate = threading.Event()
    batcher = MicroBatcher(model.predict, max_batch_size=256, max_batch_delay_ms=5, name="t-busy")
    try:
        first = asyncio.create_task(batcher.submit(_records(0, 1)))
        assert await asyncio.to_thread(model.started.wait, 10)
        later = [asyncio.create_task(batcher.submit(_records(caller, 2))) for caller in range(1, 21)]
        await asyncio.sleep(0)
        model.gate.set()
        assert await first == _expected(_records(0, 1))
        assert await asyncio.gather(*later) == [_expected(_records(caller, 2)) for caller in range(1, 21)]
    finally:
        await batcher.close()

    assert model.sizes == [1, 40]


async def test_lone_caller_runs_alone_each_time(model: FakeModel) -> None:
    batcher = MicroBatcher(model.predict, max_batch_size=256, max_batch_delay_ms=5, name="t-lone")
    try:
        for caller in range(5):
            assert await batcher.submit(_records(caller, 2)) == _expected(_records(caller, 2))
    finally:
        await batcher.close()
    assert model.sizes == [2] * 5


async def test_max_batch_size_is_respected(model: FakeModel) -> None:
    batcher = MicroBatcher(model.predict, max_batch_size=16, max_batch_delay_ms=5, name="t-max")
    inputs = [_records(caller, 3) for caller in range(50)]
    try:
        results = await asyncio.gather(*(batcher.submit(records) for records in inputs))
    finally:
        await batcher.close()

    assert results == [_expected(records) for records in inputs]
    assert max(model.sizes) <= 16
    assert all(size % 3 == 0 for size in model.sizes)  # requests are never split
    assert len(model.calls) < 50


async def test_oversized_request_runs_alone(model: FakeModel) -> None:
    batcher = MicroBatcher(model.predict, max_batch_size=4, max_batch_delay_ms=5, name="t-big")
    big = _records(99, 10)
    small = [_records(caller, 1) for caller in range(6)]
    try:
        results = await asyncio.gather(batcher.submit(big), *(batcher.submit(records) for records in small))
    finally:
        await batcher.close()

    assert results == [_expected(big)] + [_expected(records) for records in small]
    big_calls = [call for call in model.calls if any(record["id"].startswith("99-") for record in call)]
    assert big_calls == [big]
    assert all(len(call) <= 4 for call in model.calls if call is not big_calls[0])


async def test_bad_request_fails_alone(model: FakeModel) -> None:
    batcher = MicroBatcher(model.predict, max_batch_size=256, max_batch_delay_ms=5, name="t-bad")
    inputs = [_records(caller, 2) for caller in range(20)]
    for bad in (7, 13):
        inputs[bad][1]["bad"] = True
    try:
        results = await asyncio.gather(*(batcher.submit(records) for records in inputs), return_exceptions=True)
    finally:
        await batcher.close()

    for caller, (records, result) in enumerate(zip(inputs, results, strict=True)):
        if caller in (7, 13):
            # Each failing caller gets the error of its own records, not its neighbour's.
            assert isinstance(result, ValueError)
            assert str(result) == f"bad record {caller}-1"
        else:
            assert result == _expected(records)
    assert len(model.calls) < 20 + 1  # cheaper than retrying every caller alone


async def test_lone_bad_request_gets_its_error(model: FakeModel) -> None:
    batcher = MicroBatcher(model.predict, max_batch_size=8, max_batch_delay_ms=5, name="t-bad1")
    records = _records(1, 2)
    records[0]["bad"] = True
    try:
        with pytest.raises(ValueError, match="bad record 1-0"):
            await batcher.submit(records)
        assert await batcher.submit(_records(2, 1)) == _expected(_records(2, 1))
    finally:
        await batcher.close()


async def test_wrong_answer_count_is_an_error() -> None:
    batcher = MicroBatcher(lambda records: records[:-1], max_batch_size=8, max_batch_delay_ms=5, name="t-count")
    try:
        with pytest.raises(ModelServeError, match="1 answers for 2 records"):
            await batcher.submit([{"x": 1}, {"x": 2}])
    finally:
        await batcher.close()


async def test_empty_request_skips_the_engine(model: FakeModel) -> None:
    batcher = MicroBatcher(model.predict, max_batch_size=8, max_batch_delay_ms=5, name="t-empty")
    assert await batcher.submit([]) == []
    await batcher.close()
    assert model.calls == []


async def test_cancelled_caller_does_not_disturb_others(model: FakeModel) -> None:
    model.gate = threading.Event()
    batcher = MicroBatcher(model.predict, max_batch_size=256, max_batch_delay_ms=5, name="t-cancel")
    try:
        first = asyncio.create_task(batcher.submit(_records(0, 1)))
        assert await asyncio.to_thread(model.started.wait, 10)
        gone = asyncio.create_task(batcher.submit(_records(1, 1)))
        stays = asyncio.create_task(batcher.submit(_records(2, 1)))
        await asyncio.sleep(0)
        gone.cancel()
        model.gate.set()
        assert await first == _expected(_records(0, 1))
        assert await stays == _expected(_records(2, 1))
        assert gone.cancelled()
    finally:
        await batcher.close()
    assert model.sizes == [1, 1]


async def test_close_answers_queued_requests_and_leaves_no_task(model: FakeModel) -> None:
    batcher = MicroBatcher(model.predict, max_batch_size=4, max_batch_delay_ms=50, name="t-close")
    pending = [asyncio.create_task(batcher.submit(_records(caller, 1))) for caller in range(10)]
    await asyncio.sleep(0)
    await batcher.close()

    assert all(task.done() for task in pending)
    assert [task.result() for task in pending] == [_expected(_records(caller, 1)) for caller in range(10)]
    assert asyncio.all_tasks() == {asyncio.current_task()}
    with pytest.raises(ServiceUnavailable):
        await batcher.submit(_records(0, 1))
    await batcher.close()  # idempotent


async def test_batch_metrics_are_observed(model: FakeModel) -> None:
    def count(metric: str) -> float:
        return REGISTRY.get_sample_value(f"{metric}_count", {"model": "t-metrics"}) or 0.0

    def total(metric: str) -> float:
        return REGISTRY.get_sample_value(f"{metric}_sum", {"model": "t-metrics"}) or 0.0

    batcher = MicroBatcher(model.predict, max_batch_size=64, max_batch_delay_ms=5, name="t-metrics")
    before = (count("modelserve_batch_size"), total("modelserve_batch_size"), total("modelserve_batch_requests"))
    try:
        await asyncio.gather(*(batcher.submit(_records(caller, 2)) for caller in range(10)))
    finally:
        await batcher.close()

    assert count("modelserve_batch_size") - before[0] == len(model.calls)
    assert total("modelserve_batch_size") - before[1] == 20
    assert total("modelserve_batch_requests") - before[2] == 10
    assert REGISTRY.get_sample_value("modelserve_batch_size_bucket", {"model": "t-metrics", "le": "1024.0"})


async def test_rejects_nonsense_settings(model: FakeModel) -> None:
    with pytest.raises(ValueError):
        MicroBatcher(model.predict, max_batch_size=0, max_batch_delay_ms=1)
    with pytest.raises(ValueError):
        MicroBatcher(model.predict, max_batch_size=1, max_batch_delay_ms=-1)


async def test_submit_many_queues_callers_together_and_isolates_failures(model: FakeModel) -> None:
    batcher = MicroBatcher(model.predict, max_batch_size=8, max_batch_delay_ms=5, name="t-many")
    inputs = [_records(caller, 2) for caller in range(6)]
    inputs[4][0]["bad"] = True
    big = _records(9, 10)  # over max_batch_size: runs alone, as with submit
    try:
        futures = batcher.submit_many([*inputs, [], big])
        results = await asyncio.gather(*futures, return_exceptions=True)
    finally:
        await batcher.close()

    for caller, (records, result) in enumerate(zip(inputs, results[:6], strict=True)):
        if caller == 4:
            assert isinstance(result, ValueError) and str(result) == "bad record 4-0"
        else:
            assert result == _expected(records)
    assert results[6] == [] and results[7] == _expected(big)
    assert big in model.calls
    # The first engine call took whole requests up to 8 records (4 callers), not one caller at a time.
    small_calls = [call for call in model.calls if call != big]
    assert small_calls[0] == [record for records in inputs[:4] for record in records]


async def test_submit_many_after_close_is_refused(model: FakeModel) -> None:
    batcher = MicroBatcher(model.predict, max_batch_size=8, max_batch_delay_ms=5, name="t-many-closed")
    await batcher.close()
    with pytest.raises(ServiceUnavailable):
        batcher.submit_many([_records(1, 1)])
