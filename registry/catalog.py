"""The model catalog: versions, aliases and artifacts, with the registry's rules (no HTTP in here)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import func
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from inference.runtimes.base import ModelDescription
from registry.schemas import (
    ModelDetail,
    ModelSummary,
    ModelVersionPublic,
    Page,
    valid_alias,
    valid_name,
)
from registry.tables import ModelAlias, ModelVersion, RegisteredModel, utcnow
from shared.artifacts import ArtifactStore, StagedArtifact
from shared.errors import Conflict, NotFound, ValidationFailed, field_error

log = logging.getLogger(__name__)
UsageCheck = Callable[[Session, RegisteredModel, ModelVersion | None], list[str]]
"""Names of the services that use a model (version None) or one of its versions."""


def check_name(name: str, field: str = "name") -> str:
    if not valid_name(name):
        raise ValidationFailed(
            f"Invalid {field}",
            errors=[
                field_error(field, "1-128 letters, digits, '.', '_' or '-', starting with a letter or digit; no '..'",
                            expected="^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$", received=name[:200])
            ],
        )  # fmt: skip
    return name


class ModelCatalog:
    """Models and their versions in one database session, artifacts in one store."""

    def __init__(self, session: Session, store: ArtifactStore, usage: UsageCheck | None = None) -> None:
        self.session = session
        self.store = store
        self.usage = usage or (lambda _s, _m, _v: [])

    # --- reading -----------------------------------------------------------------------------------------

    def get_model(self, name: str) -> RegisteredModel:
        model = self.session.exec(select(RegisteredModel).where(RegisteredModel.name == name)).first()
        if model is None:
            raise NotFound(f"Model '{name}' does not exist")
        return model

    def resolve(self, name: str, ref: str | int) -> tuple[RegisteredModel, ModelVersion]:
        """A version by number, `latest`, or alias."""
        model = self.get_model(name)
        query = select(ModelVersion).where(ModelVersion.model_id == model.id)
        ref = str(ref)
        if ref == "latest":
            row = self.session.exec(query.order_by(col(ModelVersion.version).desc())).first()
        elif ref.isdigit():
            row = self.session.exec(query.where(ModelVersion.version == int(ref))).first()
        else:
            alias = self.session.get(ModelAlias, (model.id, ref))
            row = self.session.get(ModelVersion, alias.version_id) if alias else None
        if row is None:
            raise NotFound(f"Model '{name}' has no version '{ref}'")
        return model, row

    def aliases_of(self, model: RegisteredModel) -> dict[str, int]:
        rows = self.session.exec(
            select(ModelAlias.alias, ModelVersion.version)
            .join(ModelVersion, col(ModelVersion.id) == col(ModelAlias.version_id))
            .where(ModelAlias.model_id == model.id)
        ).all()
        return dict(sorted(rows))

    def version_public(
        self, model: RegisteredModel, row: ModelVersion, aliases: dict[str, int] | None = None
    ) -> ModelVersionPublic:
        aliases = self.aliases_of(model) if aliases is None else aliases
        return ModelVersionPublic(
            model=model.name,
            version=row.version,
            format=row.format,
            engine=row.engine,  # type: ignore[arg-type]
            algorithm=row.algorithm,
            function_type=row.function_type,
            inputs=row.signature.get("inputs", []),
            outputs=row.signature.get("outputs", []),
            targets=row.signature.get("targets", []),
            class_labels=row.signature.get("class_labels"),
            batched=row.signature.get("batched", True),  # versions stored before the field had a batch axis
            sha256=row.sha256,
            size_bytes=row.size_bytes,
            filename=row.filename,
            description=model.description,
            aliases=[a for a, v in aliases.items() if v == row.version],
            created_at=row.created_at,
        )

    def version_with_artifact(
        self, name: str, sha256: str, function_type: str | None = None
    ) -> tuple[RegisteredModel, ModelVersion] | None:
        """The newest version of model `name` stored from the file `sha256` (and served as `function_type`,
        when given), None if there is none: an upload of the same file again answers that version."""
        model = self.session.exec(select(RegisteredModel).where(RegisteredModel.name == name)).first()
        if model is None:
            return None
        query = select(ModelVersion).where(ModelVersion.model_id == model.id, ModelVersion.sha256 == sha256)
        if function_type is not None:
            query = query.where(ModelVersion.function_type == function_type)
        row = self.session.exec(query.order_by(col(ModelVersion.version).desc())).first()
        return (model, row) if row is not None else None

    def description_of(self, row: ModelVersion) -> ModelDescription:
        return ModelDescription(
            format=row.format,  # type: ignore[arg-type]
            engine=row.engine,  # type: ignore[arg-type]
            algorithm=row.algorithm,
            function_type=row.function_type,  # type: ignore[arg-type]
            **row.signature,
        )

    def _summary_fields(self, model: RegisteredModel, latest: ModelVersion | None) -> dict[str, Any]:
        return {
            "name": model.name,
            "description": model.description,
            "latest_version": latest.version if latest else None,
            "function_type": latest.function_type if latest else None,
            "format": latest.format if latest else None,
            "engine": latest.engine if latest else None,
            "algorithm": latest.algorithm if latest else None,
            "created_at": model.created_at,
            "updated_at": model.updated_at,
        }

    def list_models(self, limit: int, offset: int) -> Page[ModelSummary]:
        total = self.session.exec(select(func.count()).select_from(RegisteredModel)).one()
        models = self.session.exec(
            select(RegisteredModel).order_by(col(RegisteredModel.name)).offset(offset).limit(limit)
        ).all()
        latest = self._latest_versions([m.id for m in models if m.id is not None])
        items = [ModelSummary(**self._summary_fields(m, latest.get(m.id or 0))) for m in models]
        return Page(items=items, total=total, limit=limit, offset=offset)

    def _latest_versions(self, model_ids: list[int]) -> dict[int, ModelVersion]:
        if not model_ids:
            return {}
        newest = (
            select(ModelVersion.model_id, func.max(ModelVersion.version).label("v"))
            .where(col(ModelVersion.model_id).in_(model_ids))
            .group_by(col(ModelVersion.model_id))
            .subquery()
        )
        rows = self.session.exec(
            select(ModelVersion).join(
                newest, (col(ModelVersion.model_id) == newest.c.model_id) & (col(ModelVersion.version) == newest.c.v)
            )
        ).all()
        return {r.model_id: r for r in rows}

    def detail(self, name: str) -> ModelDetail:
        model = self.get_model(name)
        versions = self.session.exec(
            select(ModelVersion).where(ModelVersion.model_id == model.id).order_by(col(ModelVersion.version))
        ).all()
        aliases = self.aliases_of(model)
        latest = versions[-1] if versions else None
        return ModelDetail(
            **self._summary_fields(model, latest),
            versions=[v.version for v in versions],
            aliases=aliases,
            latest=self.version_public(model, latest, aliases) if latest else None,
        )

    def list_versions(self, name: str) -> list[ModelVersionPublic]:
        model = self.get_model(name)
        aliases = self.aliases_of(model)
        rows = self.session.exec(
            select(ModelVersion).where(ModelVersion.model_id == model.id).order_by(col(ModelVersion.version))
        ).all()
        return [self.version_public(model, r, aliases) for r in rows]

    # --- writing -----------------------------------------------------------------------------------------

    def add_version(
        self, name: str, staged: StagedArtifact, described: ModelDescription, *, filename: str | None,
        description: str | None,
    ) -> tuple[RegisteredModel, ModelVersion]:  # fmt: skip
        """Store a validated upload as the next version; concurrent uploads under one name get distinct numbers."""
        check_name(name)
        self.store.commit(staged)
        signature = described.model_dump(
            include={"inputs", "outputs", "targets", "class_labels", "batched"}, mode="json"
        )
        for _attempt in range(20):
            try:
                model = self._get_or_create_model(name, description)
                current = self.session.exec(
                    select(func.max(ModelVersion.version)).where(ModelVersion.model_id == model.id)
                ).one()
                row = ModelVersion(
                    model_id=model.id,  # type: ignore[arg-type]
                    version=(current or 0) + 1,
                    sha256=staged.sha256,
                    size_bytes=staged.size_bytes,
                    format=described.format,
                    filename=(filename or "")[:255] or None,
                    algorithm=described.algorithm,
                    function_type=described.function_type,
                    engine=described.engine.model_dump(mode="json"),
                    signature=signature,
                )
                model.updated_at = utcnow()
                self.session.add(row)
                self.session.add(model)
                self.session.commit()
                self.session.refresh(row)
                self.session.refresh(model)
                return model, row
            except IntegrityError:
                # Another upload took this version number (or created the model) first: take the next one.
                self.session.rollback()
        self._forget_artifact(staged.sha256)
        raise Conflict(f"Too many concurrent uploads under '{name}'; try again")

    def _get_or_create_model(self, name: str, description: str | None) -> RegisteredModel:
        model = self.session.exec(select(RegisteredModel).where(RegisteredModel.name == name)).first()
        if model is None:
            model = RegisteredModel(name=name, description=description or "")
            self.session.add(model)
            self.session.flush()
        elif description is not None:
            model.description = description
        return model

    def set_description(self, name: str, description: str) -> RegisteredModel:
        model = self.get_model(name)
        model.description = description
        model.updated_at = utcnow()
        self.session.add(model)
        self.session.commit()
        self.session.refresh(model)
        return model

    def set_alias(self, name: str, alias: str, version: int) -> ModelVersion:
        if not valid_alias(alias):
            raise ValidationFailed(
                "Invalid alias",
                errors=[field_error("alias", "a letter, then letters, digits, '.', '_' or '-'; not 'latest'",
                                    received=alias[:100])],
            )  # fmt: skip
        model, row = self.resolve(name, version)
        existing = self.session.get(ModelAlias, (model.id, alias))
        if existing is None:
            existing = ModelAlias(model_id=model.id, alias=alias, version_id=row.id)  # type: ignore[arg-type]
        else:
            existing.version_id = row.id  # type: ignore[assignment]
            existing.updated_at = utcnow()
        self.session.add(existing)
        self.session.commit()
        return row

    def delete_alias(self, name: str, alias: str) -> None:
        model = self.get_model(name)
        existing = self.session.get(ModelAlias, (model.id, alias))
        if existing is None:
            raise NotFound(f"Model '{name}' has no alias '{alias}'")
        users = self.usage(self.session, model, None)
        self.session.delete(existing)
        self.session.commit()
        if users:
            log.info("alias %s of %s removed while services %s follow the model", alias, name, users)

    def delete_version(self, name: str, ref: str) -> ModelVersion:
        model, row = self.resolve(name, ref)
        users = self.usage(self.session, model, row)
        if users:
            raise Conflict(
                f"Version {row.version} of '{name}' is used by service(s): {', '.join(users)}", services=users
            )
        for alias in self.session.exec(select(ModelAlias).where(ModelAlias.version_id == row.id)).all():
            self.session.delete(alias)
        self.session.delete(row)
        self.session.commit()
        self._forget_artifact(row.sha256)
        return row

    def delete_model(self, name: str) -> None:
        model = self.get_model(name)
        users = self.usage(self.session, model, None)
        if users:
            raise Conflict(f"Model '{name}' is used by service(s): {', '.join(users)}", services=users)
        rows = self.session.exec(select(ModelVersion).where(ModelVersion.model_id == model.id)).all()
        shas = {r.sha256 for r in rows}
        for alias in self.session.exec(select(ModelAlias).where(ModelAlias.model_id == model.id)).all():
            self.session.delete(alias)
        for r in rows:
            self.session.delete(r)
        self.session.delete(model)
        self.session.commit()
        for sha in shas:
            self._forget_artifact(sha)

    def _forget_artifact(self, sha256: str) -> None:
        # Content-addressed: another version (of any model) may share the file.
        still_used = self.session.exec(select(ModelVersion.id).where(ModelVersion.sha256 == sha256)).first()
        if still_used is None:
            self.store.delete(sha256)
