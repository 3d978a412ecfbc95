"""When the disk cannot take a write: full (ENOSPC), over a quota (EDQUOT), or a file past the size a
file system or this process's limit allows (EFBIG, `ulimit -f`).

Python's own writes say so with an errno. Other writers do not: numpy reports a short write as
`OSError: 1000000 requested and 12484 written` (no errno), torch.save as a RuntimeError from its zip
writer, SQLite as "database or disk is full". `refusal` recognises them all and, where the writer gave no
reason, finds it: the free space, the file-size limit, and a small probe write into the same folder.
The writers in atomic.py turn a refusal into an OSError naming the output; `describe` is the one line a
command prints for it.
"""
from __future__ import annotations

import errno
import os
import re
import resource
import shutil
import signal
from pathlib import Path

REFUSALS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
LOW_SPACE_BYTES = 64 << 20  # below this much free space, a short write is the disk being full
PROBE_BYTES = 1 << 20
# What writers that give no errno say instead (numpy's short write, torch's zip writer, SQLite, and
# libraries that quote the system's message inside their own).
_SHORT_WRITE = re.compile(r"\d+ requested and \d+ written|write failed|unexpected pos \d+|PytorchStreamWriter failed")
_QUOTED = {errno.ENOSPC: re.compile(r"No space left on device|database or disk is full", re.I),
           errno.EDQUOT: re.compile(r"Disk quota exceeded", re.I),
           errno.EFBIG: re.compile(r"File too large", re.I)}


def keep_writes_failing_instead_of_dying() -> None:
    """Past RLIMIT_FSIZE the kernel sends SIGXFSZ, whose default action kills the process with no word
    and no clean-up; ignored, the write fails with EFBIG instead and is handled like a full disk."""
    if hasattr(signal, "SIGXFSZ"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def file_size_limit() -> int | None:
    """This process's file-size limit in bytes (`ulimit -f`), or None when there is none."""
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    return None if soft == resource.RLIM_INFINITY else soft


def _existing(folder: Path) -> Path:
    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _probe(folder: Path) -> int | None:
    """The errno of writing PROBE_BYTES into `folder` (a quota shows only this way), or None if it took them."""
    path = folder / f".kpipe-disk-probe-{os.getpid()}"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        return exc.errno if exc.errno in REFUSALS else None
    try:
        os.write(fd, b"\0" * PROBE_BYTES)
        os.fsync(fd)
        return None
    except OSError as exc:
        return exc.errno if exc.errno in REFUSALS else None
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)


def _diagnose(folder: Path) -> int | None:
    """Why a write into `folder` came up short, when the writer did not say."""
    folder = _existing(folder)
    try:
        if shutil.disk_usage(folder).free < LOW_SPACE_BYTES:
            return errno.ENOSPC
    except OSError:
        return None
    if file_size_limit() is not None:
        return errno.EFBIG
    return _probe(folder) if folder.is_dir() else None


def refusal(exc: BaseException, folder: Path) -> int | None:
    """ENOSPC, EDQUOT or EFBIG when `exc` is the disk refusing a write into `folder`; else None.
    Call it before the failed write's partial output is removed: that output may be what filled the disk."""
    if isinstance(exc, OSError) and exc.errno in REFUSALS:
        return exc.errno
    if not isinstance(exc, (OSError, RuntimeError)) and type(exc).__name__ != "OperationalError":
        return None
    text = str(exc)
    for code, pattern in _QUOTED.items():
        if pattern.search(text):
            return code
    if _SHORT_WRITE.search(text):
        return _diagnose(folder)
    return None


def as_refusal(exc: BaseException, path: Path) -> OSError | None:
    """`exc` as an OSError with the refusal's errno and `path` (the output being written), or None."""
    code = refusal(exc, Path(path).parent)
    if code is None:
        return None
    if isinstance(exc, OSError) and exc.errno == code and exc.filename:
        return exc
    return OSError(code, os.strerror(code), str(path))


def describe(code: int, where: Path | str, prune: str | None = None) -> str:
    """The one line for a refused write into `where`; `prune`, where there is one, is the command that frees
    space this project holds."""
    if code == errno.EFBIG:
        limit = file_size_limit()
        cause = (f"a file grew past this process's file-size limit ({limit:,} bytes, `ulimit -f`)" if limit is not None
                 else "a file grew past the largest this file system takes")
        fix = ("raise the limit (`ulimit -f unlimited`)" if limit is not None
               else "move the folder to a file system that takes larger files")
        return f"{cause} while writing {where}: nothing partial was kept; {fix} and run the same command again"
    cause = "disk quota exceeded" if code == errno.EDQUOT else "disk full"
    freeing = f" (`{prune}` removes outputs no submission needs)" if prune else ""
    return f"{cause} while writing {where}: nothing partial was kept; free space{freeing} and run the same command again"
