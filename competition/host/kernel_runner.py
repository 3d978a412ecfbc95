"""Run a pushed script kernel as Kaggle would: offline, time- and memory-limited, with /kaggle/input.

The script runs in a subprocess in a new network namespace (`unshare --net`: it has no network at all,
not even the host's loopback), as its own process group so that a time-out kills everything it started,
with an address-space limit and a limit on the size of each file it writes (`prlimit`). Its input is a temporary
folder laid out like Kaggle's /kaggle/input: one sub-folder per attached competition (its data, with a
code competition's hidden test set laid over it) and per attached dataset; `KAGGLE_INPUT_ROOT` names it.
Its working directory (Kaggle's /kaggle/working) becomes the kernel's output.

Settings, read when a kernel runs:
    KPIPE_KERNEL_PYTHON      the interpreter (default: the host's own), e.g. a venv with only the
                             packages a Kaggle image would offer
    KPIPE_KERNEL_TIMEOUT_S   the longest a kernel may run (default 3600; `kernels push -t` asks for less)
    KPIPE_KERNEL_MEMORY_GB   its address-space limit (default 16)
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

MAX_LOG_BYTES = 1 << 20  # the tail of the log that is kept
MAX_OUTPUT_FILE_BYTES = 1 << 30
DEFAULT_TIMEOUT_S = 3600
DEFAULT_MEMORY_GB = 16


@dataclass
class KernelResult:
    status: str  # COMPLETE or ERROR
    failure: str  # why, for ERROR
    log: str
    seconds: float


def _setting(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name) or default)
    except ValueError:
        return default


def isolation_command() -> list[str] | None:
    """The prefix that gives a process its own, empty network namespace; None when this machine allows none."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    for prefix in ([unshare, "--net"], [unshare, "--net", "--map-root-user"]):
        try:
            if subprocess.run([*prefix, "true"], capture_output=True, timeout=10).returncode == 0:
                return prefix
        except (OSError, subprocess.TimeoutExpired):
            continue
    return None


def limits_command(memory_bytes: int) -> list[str]:
    """`prlimit` with the kernel's limits: set by a program rather than in the forked child, which in a
    threaded server must not run Python code before exec."""
    prlimit = shutil.which("prlimit")
    if prlimit is None:
        return []
    return [prlimit, f"--as={memory_bytes}", f"--fsize={MAX_OUTPUT_FILE_BYTES}", "--"]


def build_input(inputs: dict[str, list[Path]], root: Path) -> None:
    """root/<name>/ for each attached source: the folders' files copied in order (later ones win), so
    the kernel can neither see nor change the host's own copies."""
    for name, folders in inputs.items():
        for folder in folders:
            shutil.copytree(folder, root / name, dirs_exist_ok=True)


def run_kernel(script: str, inputs: dict[str, list[Path]], output: Path, timeout_s: float | None = None) -> KernelResult:
    """Run `script` with `inputs` under /kaggle/input-like names; its working directory's files end up in `output`."""
    started = time.monotonic()
    isolation = isolation_command()
    if isolation is None:
        return KernelResult("ERROR", "The local host cannot run kernels without network access on this machine "
                            "(`unshare --net` is not permitted); run the host as root or allow user namespaces",
                            "", 0.0)
    limit_s = min(timeout_s or DEFAULT_TIMEOUT_S, _setting("KPIPE_KERNEL_TIMEOUT_S", DEFAULT_TIMEOUT_S))
    memory = int(_setting("KPIPE_KERNEL_MEMORY_GB", DEFAULT_MEMORY_GB) * (1 << 30))
    python = os.environ.get("KPIPE_KERNEL_PYTHON") or sys.executable
    with tempfile.TemporaryDirectory(prefix="kpipe-kernel-") as tmp:
        root = Path(tmp)
        for sub in ("input", "working", "code", "home"):
            (root / sub).mkdir()
        build_input(inputs, root / "input")
        (root / "code" / "script.py").write_text(script, encoding="utf-8")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(root / "home"), "LANG": "C.UTF-8",
               "KAGGLE_INPUT_ROOT": str(root / "input"), "KAGGLE_KERNEL_RUN_TYPE": "Batch", "PYTHONNOUSERSITE": "1",
               "PYTHONUNBUFFERED": "1"}
        log_path = root / "log.txt"
        with open(log_path, "wb") as log:
            command = [*limits_command(memory), *isolation, python, str(root / "code" / "script.py")]
            process = subprocess.Popen(command, cwd=root / "working", env=env, stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
            try:
                code = process.wait(timeout=limit_s)
                failure = "" if code == 0 else f"The script exited with status {code}; see the log"
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                failure = f"The kernel ran over its time limit of {limit_s:.0f} s and was stopped"
        shutil.rmtree(output, ignore_errors=True)
        shutil.copytree(root / "working", output)
        with open(log_path, "rb") as fh:
            size = log_path.stat().st_size
            fh.seek(max(size - MAX_LOG_BYTES, 0))
            text = fh.read().decode("utf-8", "replace")
    return KernelResult("ERROR" if failure else "COMPLETE", failure, text, time.monotonic() - started)
