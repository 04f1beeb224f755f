"""The `script` kind of batch job: hand the script to `jobs.script_runner` and register what it writes.

The runner (a sandboxed subprocess) is written separately; this module only adapts a claimed run to its contract.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.artifacts import LocalArtifactStore
from shared.settings import Settings

if TYPE_CHECKING:
    from jobs.batch_runs import _Reporter


def run_script_job(spec: dict[str, Any], run_id: int, settings: Settings, reporter: _Reporter) -> str:
    """Run the script; files under `output/` become datasets `<job>-<run>-<file stem>`."""
    from jobs import script_runner  # type: ignore[attr-defined,unused-ignore]

    job, params = spec["job"], spec["job"]["params"]
    number = spec["run"]["number"]
    store = LocalArtifactStore(settings.datasets_dir)
    workdir = settings.data_dir / "batch-runs" / str(run_id)
    shutil.rmtree(workdir, ignore_errors=True)  # a script cannot resume: start it over
    workdir.mkdir(parents=True)
    inputs = {i["name"]: store.local_path(i["sha256"]) for i in spec.get("inputs", [])}
    script_spec = script_runner.ScriptSpec(
        code=params["code"], interpreter=params.get("interpreter", "python3"), args=list(params.get("args", [])),
        env=dict(params.get("env", {})), timeout_seconds=float(job["timeout_seconds"]),
        memory_limit_mb=int(params.get("memory_limit_mb", 1024)), inputs=inputs,
    )  # fmt: skip
    control: dict[str, Any] = {"asked_at": 0.0, "answer": "continue"}

    def should_stop() -> bool:
        # Ask the registry at most every two seconds whether a stop was requested; a poll saves no checkpoint.
        if time.monotonic() - float(control["asked_at"]) > 2:
            control["asked_at"], control["answer"] = time.monotonic(), reporter.poll()
        return control["answer"] in ("stop", "pause")

    result = script_runner.run_script(script_spec, workdir, reporter.log, should_stop, settings=settings)
    if getattr(result, "stopped", False) or control["answer"] in ("stop", "pause"):
        reporter.finish("stopped", error=None)
        return "stopped"
    if result.timed_out or result.exit_code != 0:
        reason = "timed out" if result.timed_out else f"exited with code {result.exit_code}"
        reporter.finish("failed", error=f"the script {reason}")
        return "failed"
    names = []
    for path in sorted(Path(p) for p in result.outputs):
        name = f"{job['name']}-{number}-{path.stem}"[:128]
        reporter.registry.register_dataset(name, path, f"Written by run {number} of batch job {job['name']}")
        names.append(name)
        reporter.log(f"output {path.name} registered as dataset {name}")
    reporter.finish("succeeded", result_dataset=names[0] if names else None)
    shutil.rmtree(workdir, ignore_errors=True)
    return "succeeded"
