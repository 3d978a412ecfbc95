"""The first process of a kernel's sandbox: hide the host's files, lend the kernel its interpreter, exec.

kernel_runner.py starts it, with the host's own interpreter (it imports nothing but the standard
library), as (namespace) root inside a new network and mount namespace (`unshare --net --mount`):

    kernel_jail.py --scratch DIR [--lend DIR ...] [--hide DIR ...] -- COMMAND ...

- every --lend DIR (a folder of the kernel's Python under one its user may not enter, such as a venv or
  a pyenv under /root) stays readable at its own path, read-only, while everything else in the closed
  folder above it is covered by an empty tmpfs: the kernel sees /root/.pyenv/versions/3.11.7 and nothing
  else of /root;
- every --hide DIR gets an empty, read-only tmpfs laid over it: the host's competitions, solutions and
  accounts are not there at all for the kernel, whatever their file modes;
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


def closed_ancestor(folder: str) -> str | None:
    """The topmost folder on the way to `folder` that other users may not enter; None when all are open."""
    path = "/"
    for part in folder.strip("/").split("/"):
        path = os.path.join(path, part)
        if not os.stat(path).st_mode & 0o001:
            return path
    return None


def main(argv: list[str]) -> None:
    if "--" not in argv:
        sys.exit("kernel sandbox: usage: kernel_jail.py --scratch DIR [--lend DIR] [--hide DIR] -- COMMAND ...")
    split = argv.index("--")
    options, command = argv[:split], argv[split + 1:]
    scratch, lends, hides = None, [], []
    for flag, value in zip(options[::2], options[1::2]):
        if flag == "--scratch":
            scratch = value
        elif flag == "--lend":
            lends.append(value)
        elif flag == "--hide":
            hides.append(value)
        else:
            sys.exit(f"kernel sandbox: unknown option {flag} {value}")
    # Nothing done here may reach the host's mount table (unshare makes the new namespace private too).
    mount("--make-rprivate", "/")
    if lends:
        # Each lent folder is held at a scratch mount point, its closed ancestor covered, then put back.
        held = []
        for number, folder in enumerate(lends):
            hold = os.path.join(scratch, str(number))
            os.makedirs(hold)
            mount("--bind", folder, hold)
            held.append((hold, folder))
        for cover in sorted({c for c in map(closed_ancestor, lends) if c is not None}):
            mount("-t", "tmpfs", "-o", "size=64k,mode=0755", "kpipe-lent", cover)
        for hold, folder in held:
            os.makedirs(folder, exist_ok=True)
            mount("--bind", hold, folder)
            mount("-o", "remount,bind,ro", folder)
    for folder in hides:
        if os.path.isdir(folder):
            mount("-t", "tmpfs", "-o", "ro,size=4k,mode=0555", "kpipe-hidden", folder)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
