"""Predicting for a model version: validate, then the cached runtime through its micro-batcher (no HTTP here)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from inference.batching import MicroBatcher
from inference.runtimes import load_runtime
from inference.runtimes.base import ModelDescription, Runtime
from inference.session_cache import SessionCache
from inference.validation import validate_records
from shared.artifacts import ArtifactStore
from shared.settings import Settings

_ENGINE_BY_IMPLEMENTATION = {"jpmml-evaluator": "jpmml", "pypmml": "pypmml"}
_VALIDATE_IN_THREAD = 2_000  # records; past this, validation would stall the event loop


@dataclass(frozen=True)
class VersionRef:
    """A resolved model version: what to load and how to check its input."""

    model: str
    version: int
    sha256: str
    description: ModelDescription

    @property
    def key(self) -> str:
        # The engine and function type are part of the identity: one file may be served two ways.
        return f"{self.sha256}:{self.description.engine.implementation}:{self.description.function_type}"


@dataclass
class Prediction:
    predictions: list[dict[str, Any]]
    warnings: list[str]
    timing: dict[str, float] = field(default_factory=dict)


class Predictor:
    """Loaded runtimes in a bounded cache, one micro-batcher per loaded runtime."""

    def __init__(self, settings: Settings, store: ArtifactStore) -> None:
        self.settings = settings
        self.store = store
        self.cache = SessionCache(
            max_models=settings.session_cache_max_models, max_bytes=settings.session_cache_max_bytes
        )
        self._batchers: dict[str, tuple[Runtime, MicroBatcher]] = {}
        # Versions stored before `batched` was recorded read as batched: the loaded graph knows better.
        self._descriptions: dict[str, ModelDescription] = {}
        self._closing: set[asyncio.Future[None]] = set()

    def _load(self, ref: VersionRef) -> tuple[Runtime, int]:
        path = self.store.local_path(ref.sha256)
        engine = _ENGINE_BY_IMPLEMENTATION.get(ref.description.engine.implementation or "")
        runtime = load_runtime(path, self.settings, function_type=ref.description.function_type, engine=engine)
        return runtime, path.stat().st_size

    async def runtime(self, ref: VersionRef) -> Runtime:
        runtime = await self.cache.get(ref.key, lambda: self._load(ref))
        if runtime.description.batched != ref.description.batched and ref.key not in self._descriptions:
            self._descriptions[ref.key] = ref.description.model_copy(update={"batched": runtime.description.batched})
        return runtime

    async def _checked(self, ref: VersionRef, records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
        if ref.description.format == "onnx" and ref.key not in self.cache:
            await self.runtime(ref)  # first call: validate with what the loaded graph says of its batch axis
        return await _validate(self._descriptions.get(ref.key, ref.description), records)

    def _batcher(self, ref: VersionRef, runtime: Runtime) -> MicroBatcher:
        current = self._batchers.get(ref.key)
        if current is not None and current[0] is runtime:
            return current[1]
        if current is not None:  # the runtime was evicted and loaded again: the old batcher is stale
            task = asyncio.ensure_future(current[1].close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        # A graph without a batch axis answers each record on its own: one request per engine call, no waiting.
        batched = runtime.description.batched
        batcher = MicroBatcher(
            runtime.predict,
            max_batch_size=self.settings.max_batch_size if batched else 1,
            max_batch_delay_ms=self.settings.max_batch_delay_ms if batched else 0.0,
            name=f"{ref.model}:{ref.version}",
        )
        self._batchers[ref.key] = (runtime, batcher)
        return batcher

    async def predict(self, ref: VersionRef, records: list[dict[str, Any]]) -> Prediction:
        start = time.perf_counter()
        clean, warnings = await self._checked(ref, records)
        validated = time.perf_counter()
        runtime = await self.runtime(ref)
        loaded = time.perf_counter()
        predictions = await self._batcher(ref, runtime).submit(clean)
        return Prediction(predictions, warnings, _timing(start, validated, loaded, time.perf_counter()))

    async def predict_many(
        self, ref: VersionRef, requests: list[list[dict[str, Any]] | Exception]
    ) -> list[Prediction | Exception]:
        """`predict` for several callers' records at once (one entry each, in order): each validated on its own,
        all queued on the micro-batcher together. An entry that is already an exception (its body did not
        parse), fails validation or fails in the engine gets its exception back; the others their predictions.
        """
        start = time.perf_counter()
        results: list[Prediction | Exception] = []
        pending: list[tuple[int, list[dict[str, Any]]]] = []
        for i, records in enumerate(requests):
            if isinstance(records, Exception):
                results.append(records)
                continue
            try:
                clean, warnings = await self._checked(ref, records)
            except Exception as exc:
                results.append(exc)
                continue
            results.append(Prediction([], warnings))
            pending.append((i, clean))
        if not pending:
            return results
        validated = time.perf_counter()
        runtime = await self.runtime(ref)
        loaded = time.perf_counter()
        futures = self._batcher(ref, runtime).submit_many([clean for _, clean in pending])
        answers = await asyncio.gather(*futures, return_exceptions=True)
        timing = _timing(start, validated, loaded, time.perf_counter())
        for (i, _), answer in zip(pending, answers, strict=True):
            if isinstance(answer, BaseException):
                if not isinstance(answer, Exception):
                    raise answer  # cancelled: not one caller's failure
                results[i] = answer
            else:
                prediction = results[i]
                assert isinstance(prediction, Prediction)
                prediction.predictions, prediction.timing = answer, timing
        return results

    async def close(self) -> None:
        for _, batcher in self._batchers.values():
            await batcher.close()
        self._batchers.clear()
        await self.cache.clear()


async def _validate(
    description: ModelDescription, records: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[str]]:
    if len(records) > _VALIDATE_IN_THREAD:
        return await asyncio.to_thread(validate_records, description, records)
    return validate_records(description, records)


def _timing(start: float, validated: float, loaded: float, done: float) -> dict[str, float]:
    """A prediction's phases in milliseconds, from `time.perf_counter` readings."""
    return {
        "validate_ms": round((validated - start) * 1000, 3),
        "load_ms": round((loaded - validated) * 1000, 3),
        "predict_ms": round((done - loaded) * 1000, 3),
        "total_ms": round((done - start) * 1000, 3),
    }
