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

from shared.errors import NotFound, PayloadTooLarge

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
