"""Datasets: the catalog of stored tabular files, kept by content (no HTTP in here).

What a file holds (format, rows, columns, preview) is found by `shared.tabular`, the one module that inspects,
reads and writes CSV, JSON lines and Parquet, so an upload and a batch run read a file by the same rules.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import func
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from registry import idempotency
from registry.catalog import check_name
from registry.schemas import Page
from registry.tables import Dataset, DatasetDetail, DatasetPublic, utcnow
from shared.artifacts import ArtifactStore, StagedArtifact
from shared.errors import Conflict, NotFound
from shared.tabular import DatasetInfo, InvalidDataset, inspect_table

log = logging.getLogger(__name__)

DatasetUsageCheck = Callable[[Session, Dataset], list[str]]
"""Names of the batch jobs (or runs) that use a dataset; a used dataset cannot be deleted."""

inspect_dataset = inspect_table
"""Sniff, check and describe a dataset file (see `shared.tabular.inspect_table`)."""

__all__ = ["DatasetCatalog", "DatasetInfo", "DatasetUsageCheck", "InvalidDataset", "inspect_dataset", "stage_file"]


def stage_file(store: ArtifactStore, path: Path, max_bytes: int) -> StagedArtifact:
    """Copy a local file into the store's staging (hashing it on the way); the caller commits or discards it."""
    writer = store.writer(max_bytes)
    try:
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                writer.write(chunk)
    except BaseException:
        writer.abort()
        raise
    return writer.finish()


# --- the catalog -------------------------------------------------------------------------------------------


class DatasetCatalog:
    """Datasets in one database session, their files in one content-addressed store."""

    def __init__(self, session: Session, store: ArtifactStore, usage: DatasetUsageCheck | None = None) -> None:
        self.session = session
        self.store = store
        self.usage = usage or (lambda _s, _d: [])

    def get(self, name: str) -> Dataset:
        row = self.session.exec(select(Dataset).where(Dataset.name == name)).first()
        if row is None:
            raise NotFound(f"Dataset '{name}' does not exist")
        return row

    def exists(self, name: str) -> bool:
        return self.session.exec(select(Dataset.id).where(Dataset.name == name)).first() is not None

    def ensure_absent(self, name: str) -> None:
        if self.exists(name):
            raise Conflict(f"Dataset '{name}' already exists")

    @staticmethod
    def public(row: Dataset) -> DatasetPublic:
        return DatasetPublic.model_validate(row, from_attributes=True)

    @staticmethod
    def detail(row: Dataset) -> DatasetDetail:
        return DatasetDetail.model_validate(row, from_attributes=True)

    def list(self, limit: int, offset: int) -> Page[DatasetPublic]:
        total = self.session.exec(select(func.count()).select_from(Dataset)).one()
        rows = self.session.exec(select(Dataset).order_by(col(Dataset.name)).offset(offset).limit(limit)).all()
        return Page(items=[self.public(r) for r in rows], total=total, limit=limit, offset=offset)

    def ready_path(self, row: Dataset) -> Path:
        """The stored file of a ready dataset."""
        if row.status != "ready" or row.sha256 is None:
            raise Conflict(f"Dataset '{row.name}' is not ready (status {row.status})", status_of=row.status)
        return self.store.local_path(row.sha256)

    # --- writing -----------------------------------------------------------------------------------------

    def add(
        self, name: str, staged: StagedArtifact, info: DatasetInfo, *, source: str, description: str = "",
        source_url: str | None = None, upload_key: tuple[str, str] | None = None,
    ) -> Dataset:  # fmt: skip
        """Store an inspected file as a new ready dataset (with the upload's `Idempotency-Key` and fingerprint)."""
        check_name(name)
        self.store.commit(staged)
        row = Dataset(name=name, description=description, source=source, source_url=source_url)
        self._fill(row, staged, info)
        self.session.add(row)
        if upload_key is not None:
            idempotency.remember(self.session, idempotency.DATASETS, *upload_key, ref=name)
        try:
            self.session.commit()
        except IntegrityError:
            self.session.rollback()
            self._forget_file(staged.sha256)
            raise Conflict(f"Dataset '{name}' already exists") from None
        self.session.refresh(row)
        log.info("dataset stored", extra={"dataset": name, "format": info.format, "rows": info.rows})
        return row

    def register_job_output(self, name: str, path: Path, *, max_bytes: int, description: str = "",
                            preview_rows: int = 20) -> Dataset:  # fmt: skip
        """Register a file a batch job wrote as a new dataset (source `job`); the file itself is left in place."""
        check_name(name)
        self.ensure_absent(name)
        staged = stage_file(self.store, path, max_bytes)
        try:
            info = inspect_dataset(staged.path, preview_rows)
            return self.add(name, staged, info, source="job", description=description)
        finally:
            self.store.discard(staged)  # no-op once committed

    def create_remote(self, name: str, source_url: str, description: str = "") -> Dataset:
        """A dataset to be fetched by a worker: status `fetching` until its content arrives."""
        check_name(name)
        row = Dataset(name=name, description=description, source="remote", source_url=source_url,
                      status="fetching")  # fmt: skip
        self.session.add(row)
        try:
            self.session.commit()
        except IntegrityError:
            self.session.rollback()
            raise Conflict(f"Dataset '{name}' already exists") from None
        self.session.refresh(row)
        return row

    def fetching(self, name: str, source_url: str | None = None) -> Dataset:
        """The dataset a fetch worker reports on; 409 when it is no longer waiting for that URL."""
        row = self.get(name)
        if row.status != "fetching":
            raise Conflict(f"Dataset '{name}' is not being fetched (status {row.status})")
        if source_url is not None and row.source_url != source_url:
            raise Conflict(f"Dataset '{name}' is being fetched from another URL")
        return row

    def complete_fetch(self, name: str, staged: StagedArtifact, info: DatasetInfo,
                       source_url: str | None = None) -> Dataset:  # fmt: skip
        row = self.fetching(name, source_url)
        self.store.commit(staged)
        self._fill(row, staged, info)
        row.status, row.status_reason = "ready", None
        self.session.add(row)
        self.session.commit()
        self.session.refresh(row)
        log.info("remote dataset ready", extra={"dataset": name, "format": info.format, "rows": info.rows})
        return row

    def fail_fetch(self, name: str, reason: str, source_url: str | None = None) -> Dataset:
        row = self.fetching(name, source_url)
        row.status, row.status_reason, row.updated_at = "failed", reason[:4000], utcnow()
        self.session.add(row)
        self.session.commit()
        self.session.refresh(row)
        log.warning("remote dataset failed", extra={"dataset": name, "reason": row.status_reason})
        return row

    def delete(self, name: str) -> None:
        row = self.get(name)
        users = self.usage(self.session, row)
        if users:
            raise Conflict(f"Dataset '{name}' is used by job(s): {', '.join(users)}", jobs=users)
        sha = row.sha256
        self.session.delete(row)
        self.session.commit()
        if sha is not None:
            self._forget_file(sha)

    @staticmethod
    def _fill(row: Dataset, staged: StagedArtifact, info: DatasetInfo) -> None:
        row.format, row.sha256, row.size_bytes = info.format, staged.sha256, staged.size_bytes
        row.rows, row.columns, row.preview = info.rows, info.columns, info.preview
        row.updated_at = utcnow()

    def _forget_file(self, sha256: str) -> None:
        # Content-addressed: another dataset may hold the same bytes.
        still_used = self.session.exec(select(Dataset.id).where(Dataset.sha256 == sha256)).first()
        if still_used is None:
            self.store.delete(sha256)
