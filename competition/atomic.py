"""The one way the project writes to disk: whole files and whole folders, or nothing.

Every writer fills a temporary sibling with a name unique to its process and call, flushes it to disk and
renames it into place. A reader therefore sees the previous complete version or the new complete
version, never half of one; a writer that dies (SIGKILL, full disk) leaves only a staging name behind,
which the next writer of the same output removes (`remove_staging_leftovers`). A write the disk refuses
(full, a quota, a file-size limit: disk.py) is raised as an OSError naming the output, whatever the
writer (numpy, torch) said.

Folders follow one rule when two processes publish the same output: the first one stays, the second is
discarded. Replacing a finished folder on purpose (`replace=True`, e.g. a fold trained again) swaps the
two atomically, so a reader never finds the output missing.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import secrets
import shutil
from pathlib import Path

from competition import disk

STAGING_MARK = ".kpipe-staging-"


def staging_path(final: Path) -> Path:
    """A temporary sibling of `final`, unique to this process and call: `.<name>.kpipe-staging-<pid>-<random>`."""
    return final.with_name(f".{final.name}{STAGING_MARK}{os.getpid()}-{secrets.token_hex(4)}")


def remove_staging_leftovers(final: Path) -> list[Path]:
    """Delete what earlier, interrupted writers of `final` left behind. Call it only while holding the
    output's lock (locks.py): then no live writer of `final` can own one of these."""
    prefix = f".{final.name}{STAGING_MARK}"
    removed = []
    if final.parent.is_dir():
        for leftover in final.parent.iterdir():
            if leftover.name.startswith(prefix):
                _remove(leftover)
                removed.append(leftover)
    return removed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: Path, mode: str = "w", perm: int = 0o644, **open_kwargs):
    """Open a staging file for writing; on a clean exit it is flushed, fsynced and renamed to `path`.

    `perm` applies from the file's creation (0o600 for credentials: never readable by others, not even
    for a moment). On any error the staging file is removed and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = staging_path(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, perm)
    try:
        with open(fd, mode, **open_kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        refused = disk.as_refusal(exc, path)  # before the staging file goes: it may be what filled the disk
        tmp.unlink(missing_ok=True)
        if refused is not None and refused is not exc:
            raise refused from exc
        raise
    _fsync_dir(path.parent)


def write_bytes(path: Path, data: bytes, perm: int = 0o644) -> None:
    with atomic_file(path, "wb", perm) as fh:
        fh.write(data)


def write_text(path: Path, text: str, perm: int = 0o644) -> None:
    with atomic_file(path, "w", perm, encoding="utf-8", newline="") as fh:
        fh.write(text)


def write_json(path: Path, obj, perm: int = 0o644) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n", perm)


@contextlib.contextmanager
def staged_folder(final: Path):
    """Yield an empty staging folder to fill; on an error it is removed. Publishing is the caller's
    next step (`publish_folder`), so that it can add a manifest first."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_path(final)
    staging.mkdir()
    try:
        yield staging
    except BaseException as exc:
        refused = disk.as_refusal(exc, final)
        shutil.rmtree(staging, ignore_errors=True)
        if refused is not None and refused is not exc:
            raise refused from exc
        raise


def publish_folder(staging: Path, final: Path, replace: bool = False) -> bool:
    """Rename a finished staging folder to `final`. Returns False when `final` already existed and was
    kept (another process published first; the staging folder is discarded). With `replace=True` an
    existing `final` is swapped out atomically and deleted."""
    _sync_file_system(staging)
    try:
        if replace and final.exists():
            _exchange(staging, final)  # now `staging` holds the old output
            shutil.rmtree(staging, ignore_errors=True)
        else:
            os.rename(staging, final)  # fails, never overwrites, when `final` is a non-empty folder
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            shutil.rmtree(staging, ignore_errors=True)
            raise
        shutil.rmtree(staging, ignore_errors=True)
        return False
    _fsync_dir(final.parent)
    return True


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _sync_file_system(folder: Path) -> None:
    """Flush a staged folder's files to disk in one call (Linux syncfs on its file system; else sync).

    A downloaded folder can hold thousands of files: fsync on each took 6.1 s for 12,000 small files
    here (/tmp, this machine), one syncfs 0.45 s."""
    libc = ctypes.CDLL(None, use_errno=True)
    syncfs = getattr(libc, "syncfs", None)
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if syncfs is None or syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def _exchange(a: Path, b: Path) -> None:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); elsewhere, two renames."""
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is not None:
        if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(code, os.strerror(code), str(b))
    aside = staging_path(b)
    os.rename(b, aside)
    os.rename(a, b)
    os.rename(aside, a)
