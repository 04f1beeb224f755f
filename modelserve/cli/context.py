"""The connection every command uses: `--url`/`--api-key` (or the environment, or `modelserve login`'s file)."""

from __future__ import annotations

from modelserve.client import Client


class Connection:
    url: str | None = None
    api_key: str | None = None


def client() -> Client:
    return Client(Connection.url, Connection.api_key, timeout=120)
