"""SessionCache: single-flight loads, LRU order, count and byte bounds, unload on eviction, metrics."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import REGISTRY

from inference.runtimes.base import EngineInfo, FieldSpec, ModelDescription, Runtime
from inference.session_cache import SessionCache

_DESCRIPTION = ModelDescription(
    format="onnx",
    engine=EngineInfo(name="onnx", version="0", implementation="fake"),
    algorithm="fake",
    function_type="regression",
    inputs=[FieldSpec(name="x", data_type="double")],
)


class FakeRuntime:
    """A runtime with no engine: the cache is under test, not the model."""

    description = _DESCRIPTION

    def __init__(self, name: str) -> None:
        self.name = name
        self.unloads = 0

    def predict(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"value": record["x"], "raw": {}} for record in records]

    def predict_columns(self, inputs: Any) -> None:
        return None  # no columnar path: callers take the record path

    def unload(self) -> None:
        self.unloads += 1


class Loaders:
    """Builds blocking loaders that count their calls and remember what they loaded."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.loaded: dict[str, FakeRuntime] = {}

    def __call__(self, key: str, size: int = 1) -> Callable[[], tuple[Runtime, int]]:
        def load() -> tuple[Runtime, int]:
            self.calls[key] = self.calls.get(key, 0) + 1
            runtime = FakeRuntime(key)
            self.loaded[key] = runtime
            return runtime, size

        return load


def _sample(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


@pytest.fixture
def loaders() -> Loaders:
    return Loaders()


async def test_runtime_fake_satisfies_protocol() -> None:
    assert isinstance(FakeRuntime("a"), Runtime)


async def test_hit_returns_the_same_runtime(loaders: Loaders) -> None:
    cache = SessionCache(max_models=4, max_bytes=1000)
    first = await cache.get("a", loaders("a"))
    second = await cache.get("a", loaders("a"))
    assert first is second
    assert loaders.calls == {"a": 1}
    assert len(cache) == 1
    assert "a" in cache


async def test_concurrent_gets_load_once() -> None:
    cache = SessionCache(max_models=4, max_bytes=1000)
    started, release = threading.Event(), threading.Event()
    calls = 0

    def slow_load() -> tuple[Runtime, int]:
        nonlocal calls
        calls += 1
        started.set()
        # Holds the load open until every caller is waiting on it.
        assert release.wait(10)
        return FakeRuntime("a"), 10

    tasks = [asyncio.create_task(cache.get("a", slow_load)) for _ in range(20)]
    assert await asyncio.to_thread(started.wait, 10)
    await asyncio.sleep(0)
    assert not any(task.done() for task in tasks)
    release.set()
    runtimes = await asyncio.gather(*tasks)

    assert calls == 1
    assert all(runtime is runtimes[0] for runtime in runtimes)
    assert len(cache) == 1
    assert cache.total_bytes == 10


async def test_cancelled_waiter_does_not_cancel_the_load_for_others() -> None:
    cache = SessionCache(max_models=4, max_bytes=1000)
    started, release = threading.Event(), threading.Event()

    def slow_load() -> tuple[Runtime, int]:
        started.set()
        assert release.wait(10)
        return FakeRuntime("a"), 1

    first = asyncio.create_task(cache.get("a", slow_load))
    second = asyncio.create_task(cache.get("a", slow_load))
    assert await asyncio.to_thread(started.wait, 10)
    first.cancel()
    release.set()
    runtime = await second
    assert first.cancelled()
    assert isinstance(runtime, FakeRuntime)
    assert cache.keys() == ["a"]


async def test_lru_order_follows_use(loaders: Loaders) -> None:
    cache = SessionCache(max_models=3, max_bytes=1000)
    for key in ("a", "b", "c"):
        await cache.get(key, loaders(key))
    await cache.get("a", loaders("a"))  # a becomes the most recently used
    assert cache.keys() == ["b", "c", "a"]

    await cache.get("d", loaders("d"))
    assert cache.keys() == ["c", "a", "d"]
    assert loaders.loaded["b"].unloads == 1
    assert all(loaders.loaded[key].unloads == 0 for key in ("a", "c", "d"))


async def test_count_bound(loaders: Loaders) -> None:
    cache = SessionCache(max_models=2, max_bytes=1000)
    for key in ("a", "b", "c", "d"):
        await cache.get(key, loaders(key))
    assert cache.keys() == ["c", "d"]
    assert len(cache) == 2
    assert [loaders.loaded[key].unloads for key in "abcd"] == [1, 1, 0, 0]


async def test_byte_bound_evicts_until_within(loaders: Loaders) -> None:
    cache = SessionCache(max_models=10, max_bytes=100)
    await cache.get("a", loaders("a", 40))
    await cache.get("b", loaders("b", 40))
    assert cache.total_bytes == 80

    await cache.get("c", loaders("c", 50))  # 130 > 100: a goes, 90 fits
    assert cache.keys() == ["b", "c"]
    assert cache.total_bytes == 90

    await cache.get("d", loaders("d", 95))  # b and c both go
    assert cache.keys() == ["d"]
    assert cache.total_bytes == 95
    assert [loaders.loaded[key].unloads for key in "abcd"] == [1, 1, 1, 0]


async def test_entry_larger_than_byte_bound_is_kept_alone(loaders: Loaders) -> None:
    cache = SessionCache(max_models=10, max_bytes=100)
    await cache.get("a", loaders("a", 10))
    big = await cache.get("big", loaders("big", 500))
    assert cache.keys() == ["big"]
    assert cache.total_bytes == 500
    assert loaders.loaded["a"].unloads == 1
    assert await cache.get("big", loaders("big", 500)) is big
    assert loaders.calls["big"] == 1


async def test_failing_load_reaches_every_waiter_and_is_not_cached() -> None:
    cache = SessionCache(max_models=4, max_bytes=1000)
    started, release = threading.Event(), threading.Event()
    calls = 0

    def broken_load() -> tuple[Runtime, int]:
        nonlocal calls
        calls += 1
        started.set()
        assert release.wait(10)
        raise ValueError("corrupt artifact")

    tasks = [asyncio.create_task(cache.get("a", broken_load)) for _ in range(10)]
    assert await asyncio.to_thread(started.wait, 10)
    release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)

    assert calls == 1
    assert all(isinstance(result, ValueError) and str(result) == "corrupt artifact" for result in results)
    assert len(cache) == 0
    assert cache.total_bytes == 0

    def good_load() -> tuple[Runtime, int]:
        return FakeRuntime("a"), 1

    # Not cached: the next get loads again.
    assert isinstance(await cache.get("a", good_load), FakeRuntime)
    assert cache.keys() == ["a"]


async def test_evict_and_clear_unload(loaders: Loaders) -> None:
    cache = SessionCache(max_models=4, max_bytes=1000)
    for key in ("a", "b", "c"):
        await cache.get(key, loaders(key, 5))

    assert await cache.evict("b") is True
    assert await cache.evict("b") is False
    assert cache.keys() == ["a", "c"]
    assert cache.total_bytes == 10
    assert loaders.loaded["b"].unloads == 1

    await cache.clear()
    assert len(cache) == 0
    assert cache.total_bytes == 0
    assert [loaders.loaded[key].unloads for key in "abc"] == [1, 1, 1]


async def test_unload_failure_does_not_break_the_cache(loaders: Loaders) -> None:
    class BadUnload(FakeRuntime):
        def unload(self) -> None:
            raise RuntimeError("engine already gone")

    cache = SessionCache(max_models=1, max_bytes=1000)
    await cache.get("a", lambda: (BadUnload("a"), 1))
    runtime = await cache.get("b", loaders("b"))
    assert cache.keys() == ["b"]
    assert runtime is loaders.loaded["b"]


async def test_metrics_move(loaders: Loaders) -> None:
    before = {
        name: _sample(name)
        for name in (
            "modelserve_session_cache_hits_total",
            "modelserve_session_cache_misses_total",
            "modelserve_session_cache_evictions_total",
            "modelserve_session_cache_models",
            "modelserve_session_cache_bytes",
            "modelserve_model_load_seconds_count",
        )
    }
    cache = SessionCache(max_models=2, max_bytes=1000)
    await cache.get("a", loaders("a", 100))  # miss
    await cache.get("a", loaders("a", 100))  # hit
    await cache.get("b", loaders("b", 200))  # miss
    await cache.get("c", loaders("c", 300))  # miss, evicts a

    def delta(name: str) -> float:
        return _sample(name) - before[name]

    assert delta("modelserve_session_cache_hits_total") == 1
    assert delta("modelserve_session_cache_misses_total") == 3
    assert delta("modelserve_session_cache_evictions_total") == 1
    assert delta("modelserve_model_load_seconds_count") == 3
    assert delta("modelserve_session_cache_models") == 2
    assert delta("modelserve_session_cache_bytes") == 500

    await cache.clear()
    assert delta("modelserve_session_cache_models") == 0
    assert delta("modelserve_session_cache_bytes") == 0
    assert delta("modelserve_session_cache_evictions_total") == 3


async def test_rejects_nonsense_bounds() -> None:
    with pytest.raises(ValueError):
        SessionCache(max_models=0, max_bytes=10)
    with pytest.raises(ValueError):
        SessionCache(max_models=1, max_bytes=-1)
