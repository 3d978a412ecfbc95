"""Run a pushed script kernel as Kaggle would: offline, time- and memory-limited, with /kaggle/input.

The script runs in a subprocess, as its own process group so that a time-out kills everything it
started, with an address-space limit and a limit on the size of each file it writes (`prlimit`), in a
sandbox (`sandbox_command`):
- a new network namespace: no network at all, not even the host's loopback;
- a new mount namespace in which the host's own folder (competitions, solutions, accounts) is an empty
  tmpfs (kernel_jail.py);
- its own unprivileged user (uid KERNEL_UID) when the host runs as root, and no capabilities either way;
  the folders its interpreter needs and that user could not enter (a venv or a pyenv under /root) are lent
  to it read-only at the same paths, everything else beside them hidden;
- its own venv over the interpreter (`writable_env`), so that `pip install` works in it as in a notebook.
Its input is a temporary folder laid out like Kaggle's /kaggle/input: one sub-folder per attached
competition (its data, with a code competition's hidden test set laid over it) and per attached dataset;
`KAGGLE_INPUT_ROOT` names it. Its working directory (Kaggle's /kaggle/working) becomes the kernel's output.
A kernel that asked for a GPU runs on this machine's GPUs if it has any, else on its CPU, and its log
says which; one that did not ask sees no GPU, as on Kaggle.

Settings, read when a kernel runs:
    KPIPE_KERNEL_PYTHON      the interpreter (default: the host's own), e.g. a venv with only the
                             packages a Kaggle image would offer
    KPIPE_KERNEL_TIMEOUT_S   the longest a kernel may run (default 3600; `kernels push -t` asks for less)
    KPIPE_KERNEL_MEMORY_GB   its address-space limit (default 16)
"""
from __future__ import annotations

import json
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
# The kernel's own user and group when the host runs as root: no account on this machine owns anything
# under them, so a kernel can read only what every user may.
KERNEL_UID = KERNEL_GID = 61000
JAIL = Path(__file__).with_name("kernel_jail.py")


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
    """The prefix that gives a process its own, empty network namespace and its own mount namespace;
    None when this machine allows neither."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    for prefix in ([unshare, "--net", "--mount"], [unshare, "--net", "--mount", "--map-root-user"]):
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
    the kernel can neither see nor change the host's own copies; readable by any user."""
    for name, folders in inputs.items():
        for folder in folders:
            shutil.copytree(folder, root / name, dirs_exist_ok=True)
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)


def reachable_by_others(path: Path) -> bool:
    """Whether a user other than the owner may enter every folder down to `path`."""
    return all(parent.stat().st_mode & 0o001 for parent in [*Path(path).absolute().parents][::-1][1:] + [Path(path)])


def interpreter_paths(python: str) -> dict:
    """The kernel's interpreter, asked once: its prefix (a venv), its base installation, its sys.path (.pth
    files included) and its site-packages folders."""
    found = subprocess.run([python, "-c", "import json, site, sys; print(json.dumps({'prefix': sys.prefix, "
                                          "'base_prefix': sys.base_prefix, 'path': sys.path[1:], "
                                          "'site': site.getsitepackages()}))"],
                           check=True, capture_output=True, text=True, timeout=60)
    return json.loads(found.stdout)


def lent_folders(paths: dict, drop_user: bool) -> list[Path]:
    """The interpreter's folders (and those of $KPIPE_KERNEL_LEND, os.pathsep-separated: what its packages
    link to) that the kernel's user could not reach (a venv or pyenv under /root): the jail lends them to
    it read-only, at the same paths."""
    if not drop_user:
        return []
    folders = [Path(p) for p in (paths["prefix"], paths["base_prefix"], *paths["path"]) if p]
    folders += [Path(p) for p in os.environ.get("KPIPE_KERNEL_LEND", "").split(os.pathsep) if p]
    needed = [f.resolve() for f in folders if f.exists() and not reachable_by_others(f.resolve())]
    return [f for f in needed if not any(other in f.parents for other in needed)]


def writable_env(python: str, paths: dict, root: Path) -> str:
    """A venv at root/env over the kernel's interpreter, the interpreter's packages read through a .pth:
    `pip install` in the kernel installs into it, as a Kaggle notebook's does into its image, and packages
    already there count as installed. Returns the python the kernel runs."""
    env = root / "env"
    subprocess.run([python, "-m", "venv", "--without-pip", str(env)], check=True, capture_output=True, timeout=120)
    [site_packages] = env.glob("lib/python*/site-packages")
    # addsitedir, not a plain path line: the .pth files in those folders count too, as they do for the interpreter.
    (site_packages / "kaggle-image.pth").write_text(
        "import site; " + "; ".join(f"site.addsitedir({p!r})" for p in paths["site"] if p) + "\n")
    return str(env / "bin" / "python")


def has_gpu() -> bool:
    return Path("/dev/nvidia0").exists()


def accelerator_note(accelerator: str) -> tuple[str, dict]:
    """(the log's first line, the environment the kernel gets) for the accelerator it asked for."""
    if not accelerator:
        return "", {"CUDA_VISIBLE_DEVICES": ""}  # as on Kaggle: a CPU session sees no GPU
    if has_gpu():
        return f"[local host] this kernel asked for {accelerator}: it runs on this machine's GPU(s)\n", {}
    return (f"[local host] this kernel asked for {accelerator}: this machine has no GPU, so it runs on CPU\n",
            {"CUDA_VISIBLE_DEVICES": ""})


def sandbox_command(isolation: list[str], python: str, root: Path, hide: list[Path]) -> tuple[list[str], str]:
    """The command that runs root/code/script.py in the sandbox, and the log line that says how."""
    drop_user = os.geteuid() == 0
    paths = interpreter_paths(python)
    interpreter = writable_env(python, paths, root)
    lend = [a for folder in lent_folders(paths, drop_user) for a in ("--lend", str(folder))]
    jail = [sys.executable, str(JAIL), "--scratch", str(root / "lent"), *lend,
            *[a for folder in hide for a in ("--hide", str(folder))], "--"]
    setpriv = [shutil.which("setpriv") or "setpriv", "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"]
    if drop_user:
        setpriv += [f"--reuid={KERNEL_UID}", f"--regid={KERNEL_GID}", "--clear-groups"]
        for path in [root / "working", root / "home", root / "env", *(root / "env").rglob("*")]:
            os.chown(path, KERNEL_UID, KERNEL_GID, follow_symlinks=False)
    for sub in ("", "code", "input"):
        (root / sub).chmod(0o755)
    who = f"uid {KERNEL_UID}" if drop_user else "the host's user, with no capabilities"
    return [*isolation, *jail, *setpriv, "--", interpreter, str(root / "code" / "script.py")], who


def run_kernel(script: str, inputs: dict[str, list[Path]], output: Path, timeout_s: float | None = None,
               accelerator: str = "", hide: list[Path] = ()) -> KernelResult:
    """Run `script` with `inputs` under /kaggle/input-like names, with the folders `hide` hidden; its
    working directory's files end up in `output`."""
    started = time.monotonic()
    isolation = isolation_command()
    if isolation is None:
        return KernelResult("ERROR", "The local host cannot sandbox kernels on this machine (`unshare --net "
                            "--mount` is not permitted); run the host as root or allow user namespaces", "", 0.0)
    limit_s = min(timeout_s or DEFAULT_TIMEOUT_S, _setting("KPIPE_KERNEL_TIMEOUT_S", DEFAULT_TIMEOUT_S))
    memory = int(_setting("KPIPE_KERNEL_MEMORY_GB", DEFAULT_MEMORY_GB) * (1 << 30))
    python = os.environ.get("KPIPE_KERNEL_PYTHON") or sys.executable
    with tempfile.TemporaryDirectory(prefix="kpipe-kernel-") as tmp:
        root = Path(tmp)
        for sub in ("input", "working", "code", "home"):
            (root / sub).mkdir()
        build_input(inputs, root / "input")
        (root / "code" / "script.py").write_text(script, encoding="utf-8")
        note, gpu_env = accelerator_note(accelerator)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(root / "home"), "LANG": "C.UTF-8",
               "USER": "kaggle", "LOGNAME": "kaggle", "KAGGLE_INPUT_ROOT": str(root / "input"),
               "KAGGLE_KERNEL_RUN_TYPE": "Batch", "PYTHONNOUSERSITE": "1", "PYTHONUNBUFFERED": "1",
               "PIP_CONFIG_FILE": os.devnull, **gpu_env}  # pip as offline as the kernel: not this machine's indexes
        log_path = root / "log.txt"
        sandbox, who = sandbox_command(isolation, python, root, [Path(p) for p in hide])
        with open(log_path, "wb") as log:
            log.write(f"{note}[local host] the kernel runs offline as {who}\n".encode())
            log.flush()
            command = [*limits_command(memory), *sandbox]
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
