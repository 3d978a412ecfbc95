"""Locks between kpipe processes that share a data folder (a submit beside a fold rerun, tuning workers).

One lock per output folder and one per submissions log, held with `filelock`'s advisory OS locks: the
kernel drops them when a process dies, so a killed run never leaves a lock held. The lock files live
together in <data>/.locks/, named after the path they guard, so that output folders hold outputs only.
A process that finds a lock taken says once what it waits for and who holds it, then waits.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import sys
import time
from pathlib import Path

from filelock import FileLock, Timeout

from competition import atomic
from competition.paths import data_root


def lock_path(target: Path) -> Path:
    """<data>/.locks/<name>-<hash of the absolute path>.lock: one file per guarded path, readable names."""
    absolute = str(Path(target).absolute())
    return data_root() / ".locks" / f"{Path(target).name}-{hashlib.sha256(absolute.encode()).hexdigest()[:16]}.lock"


def _owner_path(lock: Path) -> Path:
    return lock.with_name(lock.name + ".owner")


def _describe_owner(lock: Path) -> str:
    try:
        owner = json.loads(_owner_path(lock).read_text())
        return f"pid {owner['pid']} on {owner['host']} ({owner['command']}), since {owner['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another kpipe process"


@contextlib.contextmanager
def hold(target: Path, what: str):
    """Hold the lock of `target` (a file or folder path) for the with-block; `what` names it for people."""
    lock_file = lock_path(Path(target))
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_file)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(f"waiting: {what} is being written by {_describe_owner(lock_file)}; continuing when it is done",
              file=sys.stderr, flush=True)
        lock.acquire()
    try:
        atomic.write_json(_owner_path(lock_file), {
            "pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv[:4])[:200],
            "since": time.strftime("%Y-%m-%d %H:%M:%S")})
        yield
    finally:
        lock.release()


def is_held(target: Path) -> bool:
    """Whether some process holds the lock of `target` right now (for prune: never touch work in progress)."""
    lock_file = lock_path(Path(target))
    if not lock_file.exists():
        return False
    lock = FileLock(lock_file)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    lock.release()
    return False
