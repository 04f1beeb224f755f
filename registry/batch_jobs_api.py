"""`/api/v1/batch-jobs`: job definitions, schedules and runs; `/internal/batch-…`: what workers report.

Workers never touch the database: they claim a run, report progress and checkpoints, and finish it here.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import FileResponse
from pydantic import BaseModel
from sqlmodel import Session, select

from registry.batch_jobs import BatchJobs
from registry.batch_runs import RunFinish, RunManager, RunProgress
from registry.batch_schedules import RunQueue
from registry.batch_tables import BatchJob, BatchJobCreate, BatchJobPatch, BatchJobPublic, RunPublic, RunStatus
from registry.database import SessionDep
from registry.datasets_api import dataset_store
from registry.schemas import Page
from registry.tables import Dataset
from shared.errors import NotFound
from shared.paging import Limit, Offset
from shared.settings import Settings

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1/batch-jobs", tags=["batch jobs"])
internal_router = APIRouter(prefix="/internal", include_in_schema=False)
_MEDIA_TYPES = {"csv": "text/csv", "jsonl": "application/x-ndjson", "parquet": "application/vnd.apache.parquet"}


def get_jobs(request: Request, session: SessionDep) -> BatchJobs:
    return BatchJobs(session, request.app.state.settings)


def get_runs(request: Request, session: SessionDep) -> RunManager:
    return RunManager(session, request.app.state.settings, request.app.state.store)


JobsDep = Annotated[BatchJobs, Depends(get_jobs)]
RunsDep = Annotated[RunManager, Depends(get_runs)]


def _public(jobs: BatchJobs, runs: RunManager, row: BatchJob) -> BatchJobPublic:
    last = runs.last(row)
    return jobs.public(row, runs.public(last, row) if last else None)


def _sync_schedule(jobs: BatchJobs, row: BatchJob, *, recompute: bool) -> None:
    """Keep exactly one pending fire for a scheduled job (none otherwise) and show its time."""
    queue = RunQueue(jobs.settings)
    if recompute:
        row.next_run_at = None
    row.next_run_at = queue.schedule(row)
    jobs.session.add(row)
    jobs.session.commit()
    jobs.session.refresh(row)


@router.post("", status_code=201, response_model=BatchJobPublic, summary="Create a batch job")
def create_job(body: BatchJobCreate, response: Response, jobs: JobsDep, runs: RunsDep) -> BatchJobPublic:
    row = jobs.create(body)
    _sync_schedule(jobs, row, recompute=True)
    response.headers["Location"] = f"/api/v1/batch-jobs/{row.name}"
    log.info("batch job created", extra={"job": row.name, "kind": row.kind, "dispatch": row.dispatch})
    return _public(jobs, runs, row)


@router.get("", response_model=Page[BatchJobPublic], summary="List batch jobs with their last run")
def list_jobs(
    jobs: JobsDep,
    runs: RunsDep,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[BatchJobPublic]:
    rows, total = jobs.rows(limit, offset)
    return jobs.page([_public(jobs, runs, r) for r in rows], total, limit, offset)


@router.get("/{job}", response_model=BatchJobPublic, summary="Show a batch job, its next fire and last run")
def get_job(job: str, jobs: JobsDep, runs: RunsDep) -> BatchJobPublic:
    return _public(jobs, runs, jobs.get(job))


@router.patch("/{job}", response_model=BatchJobPublic, summary="Change a batch job (a new cron replaces the fire)")
def patch_job(job: str, body: BatchJobPatch, jobs: JobsDep, runs: RunsDep) -> BatchJobPublic:
    row = jobs.get(job)
    before = (row.dispatch, row.cron, row.timezone)
    row = jobs.update(row, body)
    _sync_schedule(jobs, row, recompute=before != (row.dispatch, row.cron, row.timezone))
    return _public(jobs, runs, row)


@router.delete("/{job}", status_code=204, summary="Delete a batch job and its runs (409 while a run is active)")
def delete_job(job: str, jobs: JobsDep) -> Response:
    row = jobs.get(job)
    job_id = row.id
    jobs.delete(row)
    RunQueue(jobs.settings).cancel(job_id)
    return Response(status_code=204)


@router.post("/{job}/schedule/pause", response_model=BatchJobPublic, summary="Pause the schedule (runs stay)")
def pause_schedule(job: str, jobs: JobsDep, runs: RunsDep) -> BatchJobPublic:
    row = jobs.set_schedule_paused(jobs.get(job), True)
    _sync_schedule(jobs, row, recompute=True)
    return _public(jobs, runs, row)


@router.post("/{job}/schedule/resume", response_model=BatchJobPublic, summary="Resume the schedule from now")
def resume_schedule(job: str, jobs: JobsDep, runs: RunsDep) -> BatchJobPublic:
    row = jobs.set_schedule_paused(jobs.get(job), False)
    _sync_schedule(jobs, row, recompute=True)
    return _public(jobs, runs, row)


# --- runs --------------------------------------------------------------------------------------------------


@router.post("/{job}/runs", status_code=202, response_model=RunPublic, summary="Start a run now (also scheduled jobs)")
def start_run(job: str, response: Response, jobs: JobsDep, runs: RunsDep) -> RunPublic:
    row = jobs.get(job)
    run = runs.start(row)
    response.headers["Location"] = f"/api/v1/batch-jobs/{row.name}/runs/{run.number}"
    return runs.public(run, row)


@router.get("/{job}/runs", response_model=Page[RunPublic], summary="List a job's runs, newest first")
def list_runs(
    job: str,
    jobs: JobsDep,
    runs: RunsDep,
    status: RunStatus | None = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[RunPublic]:
    return runs.list(jobs.get(job), limit, offset, status)


@router.get("/{job}/runs/{run}", response_model=RunPublic, summary="Show a run: status, progress, log tail")
def get_run(job: str, run: int, jobs: JobsDep, runs: RunsDep) -> RunPublic:
    row = jobs.get(job)
    return runs.public(runs.get(row, run), row)


@router.delete("/{job}/runs/{run}", status_code=204, summary="Delete an ended or paused run")
def delete_run(job: str, run: int, jobs: JobsDep, runs: RunsDep) -> Response:
    runs.delete(runs.get(jobs.get(job), run))
    return Response(status_code=204)


@router.post("/{job}/runs/{run}/stop", response_model=RunPublic, summary="Stop a run (at the next chunk boundary)")
def stop_run(job: str, run: int, jobs: JobsDep, runs: RunsDep) -> RunPublic:
    row = jobs.get(job)
    return runs.public(runs.stop(runs.get(row, run)), row)


@router.post("/{job}/runs/{run}/pause", response_model=RunPublic, summary="Pause a run at the next chunk boundary")
def pause_run(job: str, run: int, jobs: JobsDep, runs: RunsDep) -> RunPublic:
    row = jobs.get(job)
    return runs.public(runs.pause(runs.get(row, run)), row)


@router.post(
    "/{job}/runs/{run}/continue", response_model=RunPublic, summary="Continue a paused run from its checkpoint"
)
def continue_run(job: str, run: int, jobs: JobsDep, runs: RunsDep) -> RunPublic:
    row = jobs.get(job)
    return runs.public(runs.resume(runs.get(row, run), row), row)


@router.get("/{job}/runs/{run}/result", summary="Download the run's result dataset (streamed)")
def run_result(job: str, run: int, request: Request, jobs: JobsDep, runs: RunsDep) -> FileResponse:
    row = jobs.get(job)
    found = runs.get(row, run)
    dataset = None
    if found.result_dataset:
        dataset = runs.session.exec(select(Dataset).where(Dataset.name == found.result_dataset)).first()
    if dataset is None or dataset.sha256 is None:
        raise NotFound(f"Run {run} of '{job}' has no result (status {found.status})")
    fmt = dataset.format or ""
    return FileResponse(
        dataset_store(request).local_path(dataset.sha256),
        media_type=_MEDIA_TYPES.get(fmt, "application/octet-stream"),
        filename=f"{dataset.name}.{fmt}" if fmt else dataset.name,
        headers={"X-Content-SHA256": dataset.sha256},
    )


# --- internal: workers report here ------------------------------------------------------------------------


class FireBody(BaseModel):
    fire_at: float


@internal_router.post("/batch-runs/{run_id}/claim")
def claim_run(run_id: int, runs: RunsDep) -> dict[str, object]:
    return runs.claim(run_id)


@internal_router.post("/batch-runs/{run_id}/progress")
def report_progress(run_id: int, body: RunProgress, runs: RunsDep) -> dict[str, str]:
    return {"control": runs.progress(run_id, body)}


@internal_router.post("/batch-runs/{run_id}/finish")
def finish_run(run_id: int, body: RunFinish, runs: RunsDep) -> dict[str, str]:
    return {"status": runs.finish(run_id, body).status}


@internal_router.post("/batch-jobs/{job_id}/fire")
def fire_schedule(job_id: int, body: FireBody, runs: RunsDep) -> dict[str, int | None]:
    run = runs.fire(job_id, body.fire_at)
    return {"run_id": run.id if run else None}


def resync_schedules(engine: object, settings: Settings) -> None:
    """At start: every scheduled job has its pending fire again (Redis may have been emptied meanwhile)."""
    with Session(engine) as session:  # type: ignore[arg-type]
        queue = RunQueue(settings)
        for row in session.exec(select(BatchJob).where(BatchJob.dispatch == "schedule")).all():
            try:
                row.next_run_at = queue.schedule(row)
            except Exception:
                log.exception("could not re-sync the schedule of %s", row.name)
                continue
            session.add(row)
        session.commit()
