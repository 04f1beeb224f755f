"""Where the client finds the platform and its key: arguments, then `MODELSERVE_URL`/`MODELSERVE_API_KEY`,
then the file `modelserve login` wrote (`$XDG_CONFIG_HOME/modelserve/config.json`, mode 0600)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from modelserve.errors import ConfigError

DEFAULT_URL = "http://127.0.0.1:8000"


def config_path() -> Path:
    """The config file: `$MODELSERVE_CONFIG`, else under `$XDG_CONFIG_HOME` (default `~/.config`)."""
    explicit = os.environ.get("MODELSERVE_CONFIG")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "modelserve" / "config.json"


@dataclass
class Config:
    url: str
    api_key: str | None


def _stored() -> dict[str, str]:
    path = config_path()
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    return {k: str(v) for k, v in data.items() if isinstance(v, str)} if isinstance(data, dict) else {}


def resolve(url: str | None = None, api_key: str | None = None) -> Config:
    stored = _stored()
    return Config(
        url=(url or os.environ.get("MODELSERVE_URL") or stored.get("url") or DEFAULT_URL).rstrip("/"),
        api_key=api_key or os.environ.get("MODELSERVE_API_KEY") or stored.get("api_key"),
    )


def save(url: str, api_key: str) -> Path:
    """Write the file readable by its owner only (created 0600: the key is never world-readable, even briefly)."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump({"url": url.rstrip("/"), "api_key": api_key}, out)
    os.chmod(path, 0o600)  # an older file keeps its mode through O_TRUNC
    return path
