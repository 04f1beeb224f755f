"""A worker runs only the platform's own task functions, whatever a Redis writer puts on its queues."""

from __future__ import annotations

import importlib
import shlex
from pathlib import Path

import pytest
import redis
from rq import Callback, Queue
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from jobs.worker import ALLOWED_TASKS, build_worker
from shared.jobstore import job_key
from shared.redis import BATCH_QUEUE, PREDICT_QUEUE
from shared.settings import Settings
from tests.conftest import free_port


def _queue(settings: Settings, name: str) -> Queue:
    return Queue(name, connection=redis.Redis.from_url(settings.redis_url or ""), serializer=JSONSerializer)


@pytest.mark.parametrize("queue_name", [PREDICT_QUEUE, BATCH_QUEUE])
@pytest.mark.parametrize("func", ["os.system", "subprocess.call"])
def test_worker_refuses_a_function_outside_the_allow_list(
    settings: Settings, tmp_path: Path, queue_name: str, func: str
) -> None:
    marker = tmp_path / "pwned"
    command = f"touch {shlex.quote(str(marker))}"
    args = (command,) if func == "os.system" else (["sh", "-c", command],)
    job = _queue(settings, queue_name).enqueue(func, *args)

    build_worker(settings).work(burst=True, with_scheduler=False)

    assert not marker.exists(), "the queued shell command ran"
    fetched = Job.fetch(job.id, connection=job.connection, serializer=JSONSerializer)
    assert fetched.get_status() == JobStatus.FAILED
    assert "not a modelserve task" in (fetched.latest_result().exc_string or "")  # type: ignore[union-attr]


CALLED: list[object] = []


def record_call(*args: object) -> None:
    """Stands for any importable function an attacker would name as a callback."""
    CALLED.append(args)


@pytest.mark.parametrize("kind", ["on_success", "on_failure"])
def test_worker_refuses_a_callback_outside_the_allow_list(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    monkeypatch.setenv("MODELSERVE_REDIS_URL", settings.redis_url or "")
    monkeypatch.setenv("MODELSERVE_CALLBACK_ALLOWED_HOSTS", '["127.0.0.1"]')
    CALLED.clear()
    # An allowed task with a callback outside the list. The task succeeds when the job record does not exist
    # and fails when its callback URL does not answer (a closed port), so each kind of callback is due.
    job_id = "no-such-job"
    if kind == "on_failure":
        job_id = "closed-port"
        client = redis.Redis.from_url(settings.redis_url or "")
        client.hset(job_key(job_id), mapping={"id": job_id, "callback_url": f"http://127.0.0.1:{free_port()}/"})
    job = _queue(settings, PREDICT_QUEUE).enqueue(
        "jobs.callbacks.deliver_callback", job_id, **{kind: Callback(f"{__name__}.record_call")}
    )
    build_worker(settings).work(burst=True, with_scheduler=False)
    assert CALLED == []
    fetched = Job.fetch(job.id, connection=job.connection, serializer=JSONSerializer)
    assert fetched.get_status() == JobStatus.FAILED


def test_worker_still_runs_the_platforms_tasks(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELSERVE_REDIS_URL", settings.redis_url or "")
    job = _queue(settings, PREDICT_QUEUE).enqueue("jobs.callbacks.deliver_callback", "no-such-job")
    build_worker(settings).work(burst=True, with_scheduler=False)
    fetched = Job.fetch(job.id, connection=job.connection, serializer=JSONSerializer)
    assert fetched.get_status() == JobStatus.FINISHED
    assert fetched.return_value() == 0


def test_every_allowed_task_is_a_real_function() -> None:
    for name in ALLOWED_TASKS:
        module, _, attr = name.rpartition(".")
        assert callable(getattr(importlib.import_module(module), attr)), name
