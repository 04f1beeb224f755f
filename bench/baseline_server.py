"""The endpoint section's baseline: a one-file FastAPI + onnxruntime server, the way a typical tutorial writes it.

    BASELINE_MODEL_PATH=iris_rf.onnx uvicorn bench.baseline_server:app --port 8080

Loads one `InferenceSession` at startup; `POST /predict` with `{"X": [4 floats]}` answers the label and the class
probabilities. No auth, no validation beyond pydantic's, no second hop: what modelserve's model-test endpoint is
compared with.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI
from pydantic import BaseModel

MODEL_PATH = os.environ.get("BASELINE_MODEL_PATH", "model.onnx")

state: dict[str, Any] = {}


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load the model once, when the server starts."""
    state["session"] = ort.InferenceSession(MODEL_PATH, providers=["CPUExecutionProvider"])
    yield
    state.clear()


app = FastAPI(title="iris classifier", lifespan=lifespan)


class IrisFeatures(BaseModel):
    """One iris flower: sepal length, sepal width, petal length, petal width."""

    X: list[float]


class Prediction(BaseModel):
    label: int
    probabilities: dict[str, float]


@app.post("/predict")
def predict(features: IrisFeatures) -> Prediction:
    """Run the model on one record."""
    session: ort.InferenceSession = state["session"]
    labels, probabilities = session.run(None, {"X": np.array([features.X], dtype=np.float32)})
    return Prediction(label=int(labels[0]), probabilities={str(k): float(v) for k, v in probabilities[0].items()})


@app.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}
