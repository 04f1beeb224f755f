"""The artifact store: model files by sha256. An interface plus a local-directory implementation.

Keys are always computed by the server from the content, never taken from a client's file name or path.
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx

from shared.auth import INTERNAL_TOKEN_HEADER
from shared.errors import NotFound, PayloadTooLarge, ServiceUnavailable
from shared.settings import Settings

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class StagedArtifact:
    """Bytes received but not yet committed: validate them, then `commit` or `discard`."""

    path: Path
    sha256: str
    size_bytes: int


class ArtifactWriter:
    """Receives a file chunk by chunk, hashing as it goes and refusing it past the size limit."""

    def __init__(self, staging_dir: Path, max_bytes: int) -> None:
        staging_dir.mkdir(parents=True, exist_ok=True)
        self.path = staging_dir / f"{uuid.uuid4().hex}.part"
        self._file = self.path.open("wb")
        self._hash = hashlib.sha256()
        self._size = 0
        self._max = max_bytes

    def write(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size > self._max:
            self.abort()
            raise PayloadTooLarge(f"The file is larger than the limit of {self._max} bytes")
        self._hash.update(chunk)
        self._file.write(chunk)

    def finish(self) -> StagedArtifact:
        self._file.close()
        return StagedArtifact(self.path, self._hash.hexdigest(), self._size)

    def abort(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)


class ArtifactStore(Protocol):
    """Where model artifacts live; `local_path` gives engines a file to load."""

    def writer(self, max_bytes: int) -> ArtifactWriter: ...

    def commit(self, staged: StagedArtifact) -> None: ...

    def discard(self, staged: StagedArtifact) -> None: ...

    def local_path(self, sha256: str) -> Path: ...

    def exists(self, sha256: str) -> bool: ...

    def delete(self, sha256: str) -> None: ...


class LocalArtifactStore:
    """Content-addressed files under `root/ab/abcdef…`; staging under `root/.staging` on the same filesystem."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.staging = root / ".staging"
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, sha256: str) -> Path:
        if not _SHA256.match(sha256):
            raise NotFound("No such artifact")
        return self.root / sha256[:2] / sha256

    def writer(self, max_bytes: int) -> ArtifactWriter:
        return ArtifactWriter(self.staging, max_bytes)

    def commit(self, staged: StagedArtifact) -> None:
        target = self._path(staged.sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        # Same content already stored: keep the existing file. os.replace is atomic on one filesystem.
        if target.exists():
            staged.path.unlink(missing_ok=True)
        else:
            os.replace(staged.path, target)

    def discard(self, staged: StagedArtifact) -> None:
        staged.path.unlink(missing_ok=True)

    def local_path(self, sha256: str) -> Path:
        path = self._path(sha256)
        if not path.is_file():
            raise NotFound(f"Artifact {sha256} is missing from the store")
        return path

    def exists(self, sha256: str) -> bool:
        return self._path(sha256).is_file()

    def delete(self, sha256: str) -> None:
        self._path(sha256).unlink(missing_ok=True)


class HttpArtifactStore:
    """Read-only: model files fetched once from the registry (`GET /internal/artifacts/{sha256}`, internal token)
    into a local cache, checked against their sha256. For replicas that share no volume with the registry
    (Kubernetes pods, other machines)."""

    def __init__(self, registry_url: str, cache_dir: Path, token: str | None, timeout: float = 300.0) -> None:
        self.registry_url = registry_url.rstrip("/")
        self.cache = LocalArtifactStore(cache_dir)
        self._headers = {INTERNAL_TOKEN_HEADER: token} if token else {}
        self._timeout = timeout

    def writer(self, max_bytes: int) -> ArtifactWriter:
        raise RuntimeError("an HTTP artifact store is read-only")

    def commit(self, staged: StagedArtifact) -> None:
        raise RuntimeError("an HTTP artifact store is read-only")

    def discard(self, staged: StagedArtifact) -> None:
        staged.path.unlink(missing_ok=True)

    def exists(self, sha256: str) -> bool:
        return self.cache.exists(sha256)

    def delete(self, sha256: str) -> None:
        self.cache.delete(sha256)

    def local_path(self, sha256: str) -> Path:
        if self.cache.exists(sha256):
            return self.cache.local_path(sha256)
        self.cache._path(sha256)  # refuses anything but a sha256 before it goes into a URL
        writer = self.cache.writer(2**62)
        try:
            with httpx.stream(
                "GET", f"{self.registry_url}/internal/artifacts/{sha256}", headers=self._headers, timeout=self._timeout
            ) as resp:
                if resp.status_code == 404:
                    raise NotFound(f"Artifact {sha256} is missing from the registry's store")
                resp.raise_for_status()
                for chunk in resp.iter_bytes(1024 * 1024):
                    writer.write(chunk)
        except httpx.HTTPError as exc:
            writer.abort()
            raise ServiceUnavailable(f"Could not fetch artifact {sha256} from the registry: {exc}") from exc
        except BaseException:
            writer.abort()
            raise
        staged = writer.finish()
        if staged.sha256 != sha256:
            self.cache.discard(staged)
            raise NotFound(f"Artifact {sha256} came back with other content ({staged.sha256})")
        self.cache.commit(staged)
        return self.cache.local_path(sha256)


def artifact_store(settings: Settings) -> ArtifactStore:
    """The store an inference process reads model files from (`MODELSERVE_ARTIFACT_FETCH`)."""
    if settings.artifact_fetch == "http":
        return HttpArtifactStore(settings.registry_url, settings.data_dir / "artifact-cache", settings.internal_token)
    return LocalArtifactStore(settings.artifacts_dir)
