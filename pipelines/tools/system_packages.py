"""`python3 -m pipelines.tools.system_packages run|test`: install the Debian packages a fresh machine lacks.

The Makefile calls this before anything else, with the system's python3 (no venv yet, standard library
only), so that the README's two commands are all a newcomer runs:
    run   what `make submit` needs: python3-venv (for the venv), dataset-fashion-mnist (the local host's data)
    test  the same, plus PostgreSQL (the tests start a throw-away server), Chromium (renders the report),
          g++ and python3-dev (torch.compile builds C++ kernels)
It prints nothing when everything is there. It installs with apt-get as root, or through `sudo -n`;
otherwise it stops with one line naming the packages and the command to install them.
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import sysconfig

FASHION_MNIST_FILE = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"


def _has_venv() -> bool:
    # Debian's python3 ships venv without ensurepip unless python3-venv is installed.
    try:
        import ensurepip  # noqa: F401
    except ImportError:
        return False
    return True


# (package, what needs it, is it present)
CHECKS = {
    "run": [
        ("python3-venv", "the project's virtual environment", _has_venv),
        ("dataset-fashion-mnist", "the Fashion-MNIST competition on the local host", lambda: os.path.isfile(FASHION_MNIST_FILE)),
    ],
    "test": [
        ("postgresql", "the shared-study test (a throw-away server)", lambda: bool(glob.glob("/usr/lib/postgresql/*/bin/initdb"))),
        ("chromium", "the report test (headless rendering)", lambda: shutil.which("chromium") is not None),
        # torch.compile's CPU kernels are C++ built against Python's headers (the run itself goes without:
        # the planner then says why it does not compile).
        ("g++", "the torch.compile test (inductor's C++ kernels)", lambda: shutil.which("g++") is not None),
        ("python3-dev", "the torch.compile test (Python's headers)",
         lambda: os.path.isfile(os.path.join(sysconfig.get_path("include"), "Python.h"))),
    ],
}


def missing_packages(purpose: str) -> list[tuple[str, str]]:
    checks = CHECKS["run"] + (CHECKS["test"] if purpose == "test" else [])
    return [(package, why) for package, why, present in checks if not present()]


def _privilege_prefix() -> list[str] | None:
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0:
        return ["sudo", "-n"]
    return None


def install(packages: list[str]) -> int:
    command = f"sudo apt-get install -y {' '.join(packages)}"
    if shutil.which("apt-get") is None:
        print(f"error: missing system packages {', '.join(packages)} and this is not a Debian machine; install their "
              "equivalents yourself", file=sys.stderr)
        return 2
    prefix = _privilege_prefix()
    if prefix is None:
        print(f"error: missing Debian packages {', '.join(packages)}; install them (root needed) with: {command}",
              file=sys.stderr)
        return 2
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print(f"setup: installing Debian packages {', '.join(packages)} (once; a few minutes)", flush=True)
    for step in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", *packages]):
        result = subprocess.run(prefix + step, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if result.returncode != 0:
            tail = (result.stderr.strip().splitlines() or ["no message"])[-1]
            print(f"error: `{' '.join(step)}` failed ({tail}); run `{command}` yourself and try again", file=sys.stderr)
            return 2
    return 0


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in CHECKS:
        print(f"usage: python3 -m pipelines.tools.system_packages {'|'.join(CHECKS)}", file=sys.stderr)
        return 2
    missing = missing_packages(argv[0])
    if not missing:
        return 0
    for package, why in missing:
        print(f"setup: {package} is missing ({why})")
    status = install([package for package, _ in missing])
    still = missing_packages(argv[0]) if status == 0 else []
    if still:
        print(f"error: {still[0][0]} is still missing after apt-get install; install it yourself", file=sys.stderr)
        return 2
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
