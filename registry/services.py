"""Services: desired state in the database, made real by the deployment backend (no HTTP in here)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, model_validator
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from registry.catalog import ModelCatalog
from registry.deployment import DeploymentBackend, ReplicaStatus, ServiceSpec
from registry.tables import ModelAlias, ModelVersion, RegisteredModel, Service, UtcDatetime, utcnow
from shared.errors import Conflict, NotFound, ValidationFailed, field_error

SERVICE_NAME = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
"""A DNS label, so the same name works as a Kubernetes Service later."""
MAX_REPLICAS = 32


class ServiceCreate(BaseModel):
    name: str = Field(pattern=SERVICE_NAME, description="Lowercase letters, digits and '-' (a DNS label)")
    model: str
    version: int | None = Field(default=None, ge=1, description="Pin a version number…")
    alias: str | None = Field(default=None, description="…or follow an alias (rolls when the alias moves)")
    replicas: int = Field(default=1, ge=1, le=MAX_REPLICAS)
    cpu_reserve: float | None = Field(default=None, gt=0, le=256, description="Cores")
    memory_reserve: int | None = Field(default=None, gt=0, description="MiB")
    description: str = Field(default="", max_length=10_000)

    @model_validator(mode="after")
    def _one_target(self) -> ServiceCreate:
        if self.version is not None and self.alias is not None:
            raise ValueError("give either version or alias, not both")
        return self


class ServicePatch(BaseModel):
    version: int | None = Field(default=None, ge=1)
    alias: str | None = None
    replicas: int | None = Field(default=None, ge=1, le=MAX_REPLICAS)
    cpu_reserve: float | None = Field(default=None, gt=0, le=256)
    memory_reserve: int | None = Field(default=None, gt=0)
    description: str | None = Field(default=None, max_length=10_000)

    @model_validator(mode="after")
    def _one_target(self) -> ServicePatch:
        if self.version is not None and self.alias is not None:
            raise ValueError("give either version or alias, not both")
        return self


class ServicePublic(BaseModel):
    name: str
    model: str
    version: int | None
    """The version served now (resolved from the alias when following one)."""
    alias: str | None
    status: str
    reason: str | None = None
    replicas: int
    ready_replicas: int
    cpu_reserve: float | None
    memory_reserve: int | None
    description: str
    rest_url: str
    v2_url: str
    created_at: UtcDatetime
    updated_at: UtcDatetime
    replica_list: list[ReplicaStatus]


class ServiceManager:
    """Service CRUD over one session; every change is handed to the backend."""

    def __init__(self, session: Session, catalog: ModelCatalog, backend: DeploymentBackend) -> None:
        self.session = session
        self.catalog = catalog
        self.backend = backend

    # --- reading -----------------------------------------------------------------------------------------

    def get_row(self, name: str) -> Service:
        row = self.session.exec(select(Service).where(Service.name == name)).first()
        if row is None:
            raise NotFound(f"Service '{name}' does not exist")
        return row

    def _model(self, row: Service) -> RegisteredModel:
        model = self.session.get(RegisteredModel, row.model_id)
        assert model is not None  # RESTRICT foreign key
        return model

    def current_version(self, row: Service) -> ModelVersion | None:
        if row.version_id is not None:
            return self.session.get(ModelVersion, row.version_id)
        alias = self.session.get(ModelAlias, (row.model_id, row.alias))
        return self.session.get(ModelVersion, alias.version_id) if alias else None

    def spec(self, row: Service) -> ServiceSpec | None:
        version = self.current_version(row)
        if version is None:
            return None
        return ServiceSpec(
            name=row.name,
            model=self._model(row).name,
            version=version.version,
            replicas=row.replicas,
            paused=row.paused,
            cpu_reserve=row.cpu_reserve,
            memory_reserve=row.memory_reserve,
        )

    def public(self, row: Service) -> ServicePublic:
        runtime = self.backend.runtime(row.name)
        version = self.current_version(row)
        status, reason = runtime.status, runtime.reason
        if version is None:
            status, reason = "failed", f"alias '{row.alias}' points at no version"
        return ServicePublic(
            name=row.name,
            model=self._model(row).name,
            version=version.version if version else None,
            alias=row.alias,
            status=status,
            reason=reason,
            replicas=row.replicas,
            ready_replicas=len(runtime.ready_urls),
            cpu_reserve=row.cpu_reserve,
            memory_reserve=row.memory_reserve,
            description=row.description,
            rest_url=f"/api/v1/services/{row.name}/predict",
            v2_url=f"/v2/models/{row.name}/infer",
            created_at=row.created_at,
            updated_at=row.updated_at,
            replica_list=runtime.replicas,
        )

    def list_rows(self) -> list[Service]:
        return list(self.session.exec(select(Service).order_by(col(Service.name))).all())

    def routes(self) -> dict[str, Any]:
        """What the gateway routes by: every service's status, ready replica URLs and model signature."""
        out: dict[str, Any] = {}
        for row in self.list_rows():
            runtime = self.backend.runtime(row.name)
            version = self.current_version(row)
            model = self._model(row)
            out[row.name] = {
                "status": "failed" if version is None else runtime.status,
                "paused": row.paused,
                "model": model.name,
                "version": version.version if version else None,
                "replicas": runtime.ready_urls,
                "signature": self.catalog.version_public(model, version).model_dump(mode="json") if version else None,
            }
        return out

    # --- writing -----------------------------------------------------------------------------------------

    def _target(self, model_name: str, version: int | None, alias: str | None) -> tuple[RegisteredModel, int | None]:
        try:
            model = self.catalog.get_model(model_name)
        except NotFound as exc:
            raise ValidationFailed(
                exc.detail, errors=[field_error("model", "no such model", received=model_name)]
            ) from exc
        if alias is not None:
            if self.session.get(ModelAlias, (model.id, alias)) is None:
                raise ValidationFailed(
                    f"Model '{model_name}' has no alias '{alias}'",
                    errors=[field_error("alias", "no such alias", received=alias)],
                )
            return model, None
        try:
            _, row = self.catalog.resolve(model_name, version if version is not None else "latest")
        except NotFound as exc:
            raise ValidationFailed(
                exc.detail, errors=[field_error("version", "no such version", received=version)]
            ) from exc
        return model, row.id

    def create(self, body: ServiceCreate) -> Service:
        model, version_id = self._target(body.model, body.version, body.alias)
        row = Service(
            name=body.name,
            model_id=model.id,  # type: ignore[arg-type]
            version_id=version_id,
            alias=body.alias,
            replicas=body.replicas,
            cpu_reserve=body.cpu_reserve,
            memory_reserve=body.memory_reserve,
            description=body.description,
        )
        self.session.add(row)
        try:
            self.session.commit()
        except IntegrityError as exc:
            self.session.rollback()
            raise Conflict(f"Service '{body.name}' already exists") from exc
        self.session.refresh(row)
        return row

    def update(self, name: str, body: ServicePatch) -> Service:
        row = self.get_row(name)
        if body.version is not None or body.alias is not None:
            _, version_id = self._target(self._model(row).name, body.version, body.alias)
            row.version_id, row.alias = version_id, body.alias
        for field_name in ("replicas", "cpu_reserve", "memory_reserve", "description"):
            value = getattr(body, field_name)
            if value is not None:
                setattr(row, field_name, value)
        return self._save(row)

    def set_paused(self, name: str, paused: bool) -> Service:
        row = self.get_row(name)
        row.paused = paused
        return self._save(row)

    def delete(self, name: str) -> None:
        row = self.get_row(name)
        self.session.delete(row)
        self.session.commit()

    def _save(self, row: Service) -> Service:
        row.updated_at = utcnow()
        self.session.add(row)
        self.session.commit()
        self.session.refresh(row)
        return row

    def following(self, model_name: str) -> list[Service]:
        """Services that follow an alias of this model (they roll when it moves)."""
        model = self.session.exec(select(RegisteredModel).where(RegisteredModel.name == model_name)).first()
        if model is None:
            return []
        return list(
            self.session.exec(
                select(Service).where(Service.model_id == model.id, col(Service.alias).is_not(None))
            ).all()
        )


def services_using(session: Session, model: RegisteredModel, version: ModelVersion | None) -> list[str]:
    """The catalog's usage check: services on a model, or serving one version of it (pinned or via alias)."""
    rows = session.exec(select(Service).where(Service.model_id == model.id)).all()
    if version is None:
        return sorted(r.name for r in rows)
    names = []
    for row in rows:
        if row.version_id == version.id:
            names.append(row.name)
        elif row.alias is not None:
            alias = session.get(ModelAlias, (row.model_id, row.alias))
            if alias is not None and alias.version_id == version.id:
                names.append(row.name)
    return sorted(names)


def alias_followers(session: Session, model: RegisteredModel, alias: str) -> list[str]:
    rows = session.exec(select(Service).where(Service.model_id == model.id, Service.alias == alias)).all()
    return sorted(r.name for r in rows)
