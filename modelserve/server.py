"""The `modelserve` command: `up` runs the whole platform; the other commands run one process each.

The composition root: the one place that starts every service. Each process's entry point is imported only
when that process runs (by import string), so one process never loads another's code.
"""

from __future__ import annotations

import importlib
import os
import secrets
import shutil
import signal
import sys
import threading
import time
import urllib.request
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer

from shared.settings import Settings

app = typer.Typer(help="modelserve: serve PMML and ONNX models as HTTP services.", no_args_is_help=True)
HostOpt = Annotated[str, typer.Option(help="Address to bind.")]
PortOpt = Annotated[int, typer.Option(help="Port to bind.")]
DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", help="Data directory (MODELSERVE_DATA_DIR).")]


def _call(target: str, *args: Any, **kwargs: Any) -> Any:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)(*args, **kwargs)


def _settings(data_dir: Path | None = None) -> Settings:
    if data_dir is not None:
        os.environ["MODELSERVE_DATA_DIR"] = str(data_dir)
    return Settings()


def _serve(factory: str, process: str, host: str, port: int, workers: int = 1, *, public: bool = False) -> None:
    import uvicorn

    from shared.logging import configure_logging

    settings = Settings()
    configure_logging(process, settings.log_level, settings.log_json)
    uvicorn.run(
        factory, factory=True, host=host, port=port, log_config=None, access_log=False, lifespan="on",
        workers=workers if workers > 1 else None,
        # Header and body read timeouts (uvicorn has none); the public server also caps its connections.
        http="shared.http_guard:GuardedHttpToolsProtocol",
        timeout_keep_alive=settings.http_keep_alive_seconds,
        limit_concurrency=settings.gateway_max_connections if public else None,
    )  # fmt: skip


@app.command()
def gateway(host: HostOpt = "127.0.0.1", port: PortOpt = 8000) -> None:
    """Run the public gateway (MODELSERVE_GATEWAY_WORKERS processes)."""
    _serve("gateway.app:create_app", "gateway", host, port, workers=Settings().gateway_workers, public=True)


@app.command()
def registry(host: HostOpt = "127.0.0.1", port: PortOpt = 8001) -> None:
    """Run the registry (database, artifact store, desired state of services)."""
    _serve("registry.app:create_app", "registry", host, port)


def _exit_with_supervisor() -> None:
    """A replica outlives its registry (a restarted registry re-adopts it) but never `modelserve up`: it stops
    itself when the `up` that started the platform is gone, even if `up` died by SIGKILL."""
    raw = os.environ.get("MODELSERVE_SUPERVISOR_PID")
    if not raw or not raw.isdigit():
        return
    supervisor = int(raw)

    def watch() -> None:
        while True:
            time.sleep(1.0)
            try:
                os.kill(supervisor, 0)
            except ProcessLookupError:
                os.kill(os.getpid(), signal.SIGTERM)
                return
            except PermissionError:
                pass  # exists (another user's pid would mean reuse, but it is still not gone)

    threading.Thread(target=watch, name="supervisor-watch", daemon=True).start()


@app.command()
def inference(
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8100,
    service: Annotated[str | None, typer.Option(help="Pin to this service (a replica); else pool mode.")] = None,
    model: Annotated[str | None, typer.Option(help="The pinned model (with --service).")] = None,
    version: Annotated[int | None, typer.Option(help="The pinned model version (with --service).")] = None,
) -> None:
    """Run an inference process: pool mode (any model version), or a replica pinned to one service."""
    _exit_with_supervisor()
    affinity = os.environ.get("MODELSERVE_CPU_AFFINITY")
    if affinity and hasattr(os, "sched_setaffinity"):
        # The service's cpu_reserve: this replica's threads stay on its cores.
        os.sched_setaffinity(0, {int(c) for c in affinity.split(",")})
    if service is None:
        _serve("inference.app:create_app", "inference", host, port)
        return
    if model is None or version is None:
        raise typer.BadParameter("--service needs --model and --version")
    os.environ["MODELSERVE_PINNED"] = f"{service}\t{model}\t{version}"
    _serve("inference.app:create_pinned_app", f"replica:{service}", host, port)


@app.command()
def worker(burst: bool = False, name: str | None = None) -> None:
    """Run an RQ worker (non-forking) for async predictions and batch jobs."""
    from shared.logging import configure_logging

    settings = Settings()
    configure_logging("worker", settings.log_level, settings.log_json)
    _call("jobs.worker:run_worker", settings, burst=burst, name=name)


@app.command()
def scheduler() -> None:
    """Run the scheduler (delayed jobs, retries, cron schedules)."""
    from shared.logging import configure_logging

    settings = Settings()
    configure_logging("scheduler", settings.log_level, settings.log_json)
    _call("jobs.scheduler:run_scheduler", settings)


@app.command()
def migrate(data_dir: DataDirOpt = None) -> None:
    """Create or upgrade the database schema and make sure an admin key exists (printed once if generated)."""
    key = _call("registry.bootstrap:bootstrap", _settings(data_dir))
    if key:
        typer.echo(f"Admin API key (shown once, store it now): {key}")


@app.command()
def healthcheck(role: Annotated[str, typer.Argument(help="worker or scheduler")]) -> None:
    """Exit 0 when a live worker/scheduler heartbeat is in Redis (compose and Kubernetes probes)."""
    from shared.heartbeat import is_alive
    from shared.redis import sync_redis

    raise typer.Exit(0 if is_alive(sync_redis(Settings()), role) else 1)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - loopback URLs we built
            return bool(resp.status == 200)
    except OSError:
        return False


def _redis_ok(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


@app.command()
def up(
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8000,
    data_dir: DataDirOpt = None,
    ready_timeout: Annotated[float, typer.Option(help="Seconds to wait for the platform to be ready.")] = 120.0,
) -> None:
    """Run the whole platform on this machine: Redis (embedded unless MODELSERVE_REDIS_URL is set), registry,
    an inference pool, a worker, the scheduler and the gateway, supervised until Ctrl-C."""
    from shared.datadir import SECRETS_DIR, DataDirInUse, DataDirLock, read_or_create_secret, secure_dir, write_secret

    # Everything this process and its children create (database, artifacts, AOF, metrics) is the user's only.
    os.umask(0o077)
    settings = _settings(data_dir)
    data = settings.data_dir
    data.mkdir(parents=True, exist_ok=True)
    gateway_url = f"http://{host}:{port}"
    lock = DataDirLock(data)
    try:
        lock.acquire()
    except DataDirInUse as exc:
        # Before anything else: the running instance's Redis, database and metrics stay untouched.
        typer.echo(f"modelserve up: {exc}", err=True)
        raise typer.Exit(2) from exc
    lock.describe(url=gateway_url, pid=os.getpid())
    secure_dir(data)
    # No child needs the bootstrap admin key (it is stored hashed below): keep it out of every environment.
    os.environ.pop("MODELSERVE_ADMIN_KEY", None)
    run_dir = data / "run"
    metrics_dir = run_dir / "metrics"
    # What a previous instance that died left here (metrics, replica records) is stale: we hold the lock now.
    shutil.rmtree(run_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    # Before prometheus_client is imported anywhere in this process: every process writes to one directory.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)

    from shared.logging import configure_logging
    from shared.metrics import PROCESS_RESTARTS
    from shared.redis_server import redis_server_argv, redis_url_for
    from shared.supervisor import ChildSpec, Supervisor, become_subreaper, free_port, java_env

    configure_logging("up", settings.log_level, settings.log_json)
    # Replicas outlive a registry that dies (they are the registry's children): they become ours, and we stop them.
    become_subreaper()
    supervisor = Supervisor(on_restart=lambda child: PROCESS_RESTARTS.labels(child.spec.name).inc())
    stop_requested = False

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    python = sys.executable
    cli = [python, "-m", "modelserve.server"]
    secrets_dir = secure_dir(data / SECRETS_DIR)
    internal_token = settings.internal_token or secrets.token_urlsafe(32)
    write_secret(secrets_dir / "internal-token", internal_token)
    env: dict[str, str] = {
        "MODELSERVE_DATA_DIR": str(data),
        "MODELSERVE_INTERNAL_TOKEN": internal_token,
        "MODELSERVE_PUBLIC_URL": settings.public_url or gateway_url,
        "MODELSERVE_SUPERVISOR_PID": str(os.getpid()),
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "PYTHONUNBUFFERED": "1",
    }
    try:
        if settings.redis_url:
            redis_url = settings.redis_url
        else:
            redis_port = free_port()
            password = read_or_create_secret(secrets_dir / "redis-password")
            redis_url = redis_url_for(redis_port, password)
            argv = redis_server_argv(data, redis_port, password, settings.redis_appendfsync)
            supervisor.add(ChildSpec("redis", argv, ready=lambda: _redis_ok(redis_url)), wait_ready=30)
        env["MODELSERVE_REDIS_URL"] = redis_url
        os.environ.update(env)
        admin_key = _call("registry.bootstrap:bootstrap", Settings(admin_key=settings.admin_key))

        registry_port, inference_port = free_port(), free_port()
        env["MODELSERVE_REGISTRY_URL"] = f"http://127.0.0.1:{registry_port}"
        env["MODELSERVE_INFERENCE_URL"] = f"http://127.0.0.1:{inference_port}"
        env = java_env({**os.environ, **env})
        specs = [
            ChildSpec("registry", [*cli, "registry", "--port", str(registry_port)], env,
                      ready=lambda: _http_ok(f"http://127.0.0.1:{registry_port}/health/live")),
            ChildSpec("inference", [*cli, "inference", "--port", str(inference_port)], env,
                      ready=lambda: _http_ok(f"http://127.0.0.1:{inference_port}/health/live")),
            ChildSpec("worker", [*cli, "worker"], env),
            ChildSpec("scheduler", [*cli, "scheduler"], env),
            ChildSpec("gateway", [*cli, "gateway", "--host", host, "--port", str(port)], env,
                      ready=lambda: _http_ok(f"{gateway_url}/health/live")),
        ]  # fmt: skip
        for spec in specs:
            supervisor.add(spec, wait_ready=60)
        deadline = time.monotonic() + ready_timeout
        while not _http_ok(f"{gateway_url}/health/ready"):
            if stop_requested or time.monotonic() > deadline:
                raise RuntimeError("the platform did not become ready in time" if not stop_requested else "stopped")
            supervisor.poll()
            time.sleep(0.2)
        _banner(gateway_url, data, admin_key)
        while not stop_requested:
            supervisor.poll()
            time.sleep(0.2)
    except RuntimeError as exc:
        typer.echo(f"modelserve up: {exc}", err=True)
        raise typer.Exit(1) from exc
    finally:
        typer.echo("stopping…", err=True)
        supervisor.stop_all()
        shutil.rmtree(run_dir, ignore_errors=True)
        lock.release()
    typer.echo("stopped", err=True)


def _banner(url: str, data: Path, admin_key: str | None) -> None:
    lines = [
        "",
        "modelserve is ready",
        f"  console   {url}/",
        f"  API       {url}/api/v1",
        f"  API docs  {url}/docs",
        f"  metrics   {url}/metrics",
        f"  data      {data}",
    ]
    if admin_key:
        lines += ["", f"  admin API key (shown once, store it now): {admin_key}"]
    lines += ["", "Press Ctrl-C to stop.", ""]
    typer.echo("\n".join(lines))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
