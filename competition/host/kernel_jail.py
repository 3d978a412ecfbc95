"""The first process of a kernel's sandbox: hide the host's files, lend the kernel its interpreter, exec.

kernel_runner.py starts it, with the host's own interpreter (it imports nothing but the standard
library), as (namespace) root inside a new network and mount namespace (`unshare --net --mount`):

    kernel_jail.py --hide DIR ... --bind SRC=DST ... -- COMMAND ...

- every --hide DIR gets an empty, read-only tmpfs laid over it: the host's competitions, solutions and
  accounts are not there at all for the kernel, whatever their file modes;
- every --bind SRC=DST makes SRC (the kernel's Python environment, when it lives under a folder the
  kernel's user may not enter, such as /root) readable at DST, read-only;
- then COMMAND runs in place of this process (`setpriv`, which drops to the kernel's own user and every
  capability before it starts Python).

The mounts die with the namespace when the kernel ends; nothing outside it ever sees them.
"""
from __future__ import annotations

import os
import subprocess
import sys


def mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"kernel sandbox: mount {' '.join(args)} failed: {done.stderr.strip() or done.returncode}")


def main(argv: list[str]) -> None:
    if "--" not in argv:
        sys.exit("kernel sandbox: usage: kernel_jail.py [--hide DIR] [--bind SRC=DST] -- COMMAND ...")
    split = argv.index("--")
    options, command = argv[:split], argv[split + 1:]
    hides, binds = [], []
    for flag, value in zip(options[::2], options[1::2]):
        if flag == "--hide":
            hides.append(value)
        elif flag == "--bind" and "=" in value:
            binds.append(value.split("=", 1))
        else:
            sys.exit(f"kernel sandbox: unknown option {flag} {value}")
    # Nothing done here may reach the host's mount table (unshare makes the new namespace private too).
    mount("--make-rprivate", "/")
    for source, target in binds:
        mount("--bind", source, target)
        mount("-o", "remount,bind,ro", target)
    for folder in hides:
        if os.path.isdir(folder):
            mount("-t", "tmpfs", "-o", "ro,size=4k,mode=0555", "kpipe-hidden", folder)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
