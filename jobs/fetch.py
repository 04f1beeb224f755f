"""Fetches a remote dataset in a worker and hands it to the registry.

Users choose the URL, so the worker refuses to be a way into the platform's own network: only http(s), and no
loopback, link-local, private, multicast, reserved or unspecified address (IPv4 or IPv6, including IPv4 inside
IPv6) unless the host or a network holding the address is in `dataset_fetch_allowlist`. Each redirect is checked
the same way, and the connection goes to the address that was checked (no second DNS answer to rebind).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO
from urllib.parse import quote, urljoin, urlsplit

import httpx

from shared.auth import INTERNAL_TOKEN_HEADER
from shared.settings import Settings

log = logging.getLogger(__name__)

MAX_REDIRECTS = 5
_REDIRECTS = {301, 302, 303, 307, 308}
_CHUNK = 1 << 20
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class FetchFailed(Exception):
    """The remote file cannot be had; the message is the reason the dataset shows."""


@dataclass
class _Target:
    url: str
    """The URL with its host replaced by the checked address."""
    host: str
    host_header: str


def fetch_remote_dataset(name: str, url: str, *, settings: Settings | None = None) -> None:
    """The RQ task: download `url`, then stream it to the registry, which checks it and makes the dataset ready.

    Any failure turns the dataset `failed` with the reason.
    """
    settings = settings or Settings()
    workdir = settings.data_dir / ".fetch"
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryFile(dir=workdir) as tmp:
            size = download(url, tmp, settings)
            tmp.seek(0)
            _hand_over(name, url, tmp, size, settings)
    except FetchFailed as exc:
        log.warning("dataset %s: fetch failed: %s", name, exc)
        _report_failure(name, url, str(exc), settings)
    except Exception as exc:
        _report_failure(name, url, f"unexpected error: {type(exc).__name__}: {exc}", settings)
        raise


def download(url: str, out: BinaryIO, settings: Settings) -> int:
    """Stream `url` into `out` (following up to 5 checked redirects); the number of bytes written."""
    limit = settings.max_upload_bytes
    deadline = time.monotonic() + settings.dataset_fetch_timeout_seconds
    headers = {"Accept-Encoding": "identity", "User-Agent": "modelserve-dataset-fetch"}
    # trust_env=False: a proxy from the environment would connect to a host we did not check.
    with httpx.Client(
        timeout=settings.dataset_fetch_timeout_seconds, follow_redirects=False, trust_env=False
    ) as client:
        current = url
        for _hop in range(MAX_REDIRECTS + 1):
            target = check_url(current, settings)
            request = client.build_request(
                "GET", target.url, headers={**headers, "Host": target.host_header},
                extensions={"sni_hostname": target.host},
            )  # fmt: skip
            try:
                response = client.send(request, stream=True)
            except httpx.TimeoutException as exc:
                raise FetchFailed(f"{display(current)} timed out ({type(exc).__name__})") from exc
            except httpx.HTTPError as exc:
                raise FetchFailed(f"{display(current)} could not be reached: {exc}") from exc
            try:
                if response.status_code in _REDIRECTS:
                    location = response.headers.get("location")
                    if not location:
                        raise FetchFailed(f"{display(current)} redirects without a Location")
                    current = urljoin(current, location)
                    continue
                if response.status_code != 200:
                    raise FetchFailed(f"{display(current)} answered HTTP {response.status_code}")
                return _stream_body(response, out, limit, deadline, current, settings)
            finally:
                response.close()
        raise FetchFailed(f"more than {MAX_REDIRECTS} redirects (last to {display(current)})")


def _stream_body(
    response: httpx.Response, out: BinaryIO, limit: int, deadline: float, url: str, settings: Settings
) -> int:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise FetchFailed(f"the file ({declared} bytes) is larger than the limit of {limit} bytes")
    size = 0
    try:
        for chunk in response.iter_bytes(_CHUNK):
            size += len(chunk)
            if size > limit:
                raise FetchFailed(f"the file is larger than the limit of {limit} bytes")
            if time.monotonic() > deadline:
                raise FetchFailed(f"the download took longer than {settings.dataset_fetch_timeout_seconds:g} s")
            out.write(chunk)
    except httpx.TimeoutException as exc:
        raise FetchFailed(f"{display(url)} timed out ({type(exc).__name__})") from exc
    except httpx.HTTPError as exc:
        raise FetchFailed(f"the download from {display(url)} broke off: {exc}") from exc
    return size


def check_url(url: str, settings: Settings) -> _Target:
    """Refuse what must not be fetched; the URL pinned to the address that passed the checks."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in {"http", "https"}:
        raise FetchFailed(f"only http and https URLs are fetched, not {scheme + '://' if scheme else url[:100]!r}")
    try:
        host, port = parts.hostname, parts.port or (443 if scheme == "https" else 80)
    except ValueError as exc:
        raise FetchFailed(f"invalid URL {url[:200]!r}: {exc}") from exc
    if not host:
        raise FetchFailed(f"the URL {url[:200]!r} has no host")
    host = host.rstrip(".")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise FetchFailed(f"cannot resolve {host}: {exc}") from exc
    addresses = list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos))
    if not addresses:
        raise FetchFailed(f"{host} has no address")
    for address in addresses:
        kind = refusal_reason(address)
        if kind and not allowed(host, address, settings.dataset_fetch_allowlist):
            shown = host if host == str(address) else f"{host} ({address})"
            raise FetchFailed(
                f"refused to fetch from {shown}: {address} is a {kind} address "
                "(add the host or its network to MODELSERVE_DATASET_FETCH_ALLOWLIST to allow it)"
            )
    address = addresses[0]
    literal = f"[{address}]" if address.version == 6 else str(address)
    default_port = parts.port is None or parts.port == (443 if scheme == "https" else 80)
    shown_host = f"[{host}]" if ":" in host else host
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@{literal}:{port}" if userinfo else f"{literal}:{port}"
    pinned = parts._replace(netloc=netloc, scheme=scheme, fragment="").geturl()
    return _Target(pinned, host, shown_host if default_port else f"{shown_host}:{port}")


def refusal_reason(address: IPAddress) -> str | None:
    """Why an address is off limits (`loopback`, `private`, …), or None for a public address."""
    candidates: list[IPAddress] = []
    if isinstance(address, ipaddress.IPv6Address):
        embedded = [address.ipv4_mapped, address.sixtofour, address.teredo[1] if address.teredo else None]
        if address in _NAT64:
            embedded.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        candidates.extend(e for e in embedded if e is not None)
    candidates.append(address)
    for candidate in candidates:
        for attribute, kind in (
            ("is_unspecified", "unspecified"),
            ("is_loopback", "loopback"),
            ("is_link_local", "link-local"),
            ("is_multicast", "multicast"),
            ("is_reserved", "reserved"),
            ("is_private", "private"),
        ):
            if getattr(candidate, attribute):
                return kind
        if isinstance(candidate, ipaddress.IPv6Address) and candidate.is_site_local:
            return "site-local"
        if not candidate.is_global:
            return "non-public"
    return None


def allowed(host: str, address: IPAddress, allowlist: list[str]) -> bool:
    """The host by name, or a network holding the address, is allow-listed."""
    host = host.lower().rstrip(".")
    for entry in allowlist:
        entry = entry.strip().lower().rstrip(".")
        try:
            network = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            if entry == host:
                return True
            continue
        mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
        if address in network or (mapped is not None and mapped in network):
            return True
    return False


def display(url: str) -> str:
    """A URL fit for a reason or a log line: no credentials, no query string."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{netloc}{parts.path}"


# --- talking to the registry ---------------------------------------------------------------------------------


def _registry(settings: Settings, name: str, action: str) -> str:
    return f"{settings.registry_url.rstrip('/')}/internal/datasets/{quote(name, safe='')}/{action}"


def _headers(settings: Settings) -> dict[str, str]:
    return {INTERNAL_TOKEN_HEADER: settings.internal_token} if settings.internal_token else {}


def _chunks(fh: BinaryIO) -> Iterator[bytes]:
    while chunk := fh.read(_CHUNK):
        yield chunk


def _hand_over(name: str, url: str, fh: BinaryIO, size: int, settings: Settings) -> None:
    # The registry reads the whole file before answering: give that time.
    timeout = httpx.Timeout(settings.request_timeout_seconds, read=10 * settings.request_timeout_seconds)
    try:
        response = httpx.put(
            _registry(settings, name, "content"),
            params={"source_url": url},
            content=_chunks(fh),
            headers={**_headers(settings), "Content-Length": str(size), "Content-Type": "application/octet-stream"},
            timeout=timeout,
        )
    except httpx.HTTPError as exc:
        raise FetchFailed(f"the registry could not take the file: {exc}") from exc
    if response.status_code == 200:
        log.info("dataset %s fetched (%d bytes)", name, size)
    elif response.status_code in {404, 409, 413, 422}:
        # The registry refused the file (and recorded why), or the dataset was deleted or re-created meanwhile.
        log.warning("dataset %s: the registry refused the file: %s", name, _detail(response))
    else:
        raise FetchFailed(f"the registry answered HTTP {response.status_code}: {_detail(response)}")


def _report_failure(name: str, url: str, reason: str, settings: Settings) -> None:
    response = httpx.post(
        _registry(settings, name, "failed"),
        json={"reason": reason[:4000], "source_url": url},
        headers=_headers(settings),
        timeout=settings.request_timeout_seconds,
    )
    if response.status_code in {404, 409}:
        log.info("dataset %s: failure not recorded (%s)", name, _detail(response))
    elif response.status_code >= 300:
        raise RuntimeError(f"the registry answered HTTP {response.status_code} to a failure report")


def _detail(response: httpx.Response) -> str:
    try:
        return str(response.json().get("detail", response.text))[:500]
    except ValueError:
        return response.text[:500]
