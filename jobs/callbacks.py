"""Delivers an async job's result to its `callback_url` (RQ retries it with backoff on failure)."""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

import httpx

from shared.jobstore import decode, job_key, public
from shared.redis import sync_redis
from shared.settings import Settings

log = logging.getLogger(__name__)


class CallbackFailed(Exception):
    pass


def deliver_callback(job_id: str) -> int:
    """POST the job (as `GET /api/v1/jobs/{id}` shows it) to its callback URL; raise to let RQ retry."""
    settings = Settings()
    raw = sync_redis(settings).hgetall(job_key(job_id))
    if not raw:
        return 0  # expired: nothing to deliver
    record = decode(raw)
    url = record.get("callback_url")
    if not url:
        return 0
    host = urlsplit(url).hostname
    if host not in settings.callback_allowed_hosts:  # the allow-list may have shrunk since the submit
        log.warning("callback for job %s refused: host %s no longer allowed", job_id, host)
        return 0
    try:
        resp = httpx.post(url, json=public(record), timeout=10, follow_redirects=False)
    except httpx.HTTPError as exc:
        raise CallbackFailed(f"callback to {host} failed: {exc}") from exc
    if resp.status_code >= 300:
        raise CallbackFailed(f"callback to {host} answered {resp.status_code}")
    return resp.status_code
