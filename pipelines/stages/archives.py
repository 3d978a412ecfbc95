"""Untrusted archives, unpacked safely: zip, tar (plain, gzip, bzip2, xz) and 7z, and archives inside
them (dogs-vs-cats ships train.zip inside the competition's zip).

Every archive is listed and checked before a byte is written: entries that would land outside the
folder, links and device files, names given twice or both as a file and as a folder, an entry that
would overwrite a file unpacked before, more entries or more bytes than a competition plausibly holds
(counted over all the nested levels together), a compression ratio only a bomb has, and a disk too
small. While unpacking, an entry that yields more bytes than its header said is refused too. Each
problem is one DataError naming the archive and the entry.
"""
from __future__ import annotations

import os
import shutil
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Callable

from competition.errors import DataError

MAX_ENTRIES = 500_000
MAX_ENTRY_BYTES = 8 << 30
MAX_RATIO = 200  # uncompressed / compressed, for entries above RATIO_FLOOR_BYTES; images and arrays stay far below
RATIO_FLOOR_BYTES = 1 << 20
MAX_DEPTH = 3  # an archive inside an archive inside an archive; deeper is not a competition's layout
GIB = 1 << 30
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".7z")
CHUNK = 1 << 20


def max_total_bytes() -> int:
    """Largest total the unpacked competition may have ($KPIPE_UNZIP_LIMIT_GB, default 32 GiB)."""
    value = os.environ.get("KPIPE_UNZIP_LIMIT_GB", "32")
    try:
        return int(float(value) * GIB)
    except ValueError:
        raise DataError(f"KPIPE_UNZIP_LIMIT_GB={value!r}: must be a number of GiB, e.g. 64") from None


def _reason(exc: BaseException) -> str:
    """The first line of a library's error, shortened: an error here is one line."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:160]


def _size(n: int) -> str:
    return f"{n / GIB:.1f} GiB" if n >= GIB // 10 else f"{n:,} bytes"


def is_archive(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


@dataclass(frozen=True)
class Entry:
    name: str  # as the archive writes it
    size: int  # uncompressed, as the header says
    compressed: int | None = None  # None where the format does not say per entry (tar; solid 7z)
    is_dir: bool = False
    is_special: bool = False  # a link, a device or a fifo: never extracted


@dataclass
class Budget:
    """What all the levels of one download may still unpack, and what they have unpacked: {name: size}."""

    total_limit: int = field(default_factory=max_total_bytes)
    entries: int = 0
    bytes: int = 0
    files: dict[str, int] = field(default_factory=dict)


# --- one lister and one reader per format -------------------------------------------------------------


def _zip_entries(path: Path) -> tuple[list[Entry], Callable[[Entry], BinaryIO], Callable[[], None]]:
    archive = zipfile.ZipFile(path)
    infos = {info.filename: info for info in archive.infolist()}
    entries = [Entry(info.filename, info.file_size, info.compress_size, info.is_dir(),
                     (info.external_attr >> 16) & 0o170000 == 0o120000) for info in archive.infolist()]
    return entries, lambda entry: archive.open(infos[entry.name]), archive.close


def _tar_entries(path: Path) -> tuple[list[Entry], Callable[[Entry], BinaryIO], Callable[[], None]]:
    archive = tarfile.open(path, "r:*")
    members = archive.getmembers()
    by_name = {member.name: member for member in members}
    entries = [Entry(m.name, m.size, None, m.isdir(), not (m.isfile() or m.isdir())) for m in members]
    return entries, lambda entry: archive.extractfile(by_name[entry.name]), archive.close


def _7z_entries(path: Path) -> tuple[list[Entry], None, Callable[[], None]]:
    import py7zr  # only a .7z needs it

    archive = py7zr.SevenZipFile(path)
    entries = [Entry(f.filename, int(f.uncompressed or 0), None, f.is_directory,
                     f.is_symlink or not (f.is_file or f.is_directory)) for f in archive.list()]
    return entries, None, archive.close


def _open(path: Path):
    name = path.name.lower()
    kind, lister = (("zip", _zip_entries) if name.endswith(".zip") else ("7z", _7z_entries) if name.endswith(".7z")
                    else ("tar", _tar_entries))
    try:
        return lister(path)
    except Exception as exc:  # also py7zr's own errors (Bad7zFile, UnsupportedCompressionMethodError, ...)
        if isinstance(exc, (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError, ValueError)) \
                or type(exc).__module__.startswith("py7zr"):
            raise DataError(f"{path}: not a valid {kind} file ({_reason(exc)}); delete it and download again") from None
        raise


# --- checks, before anything is written -------------------------------------------------------------------


def check_entries(entries: list[Entry], archive: Path, dest: Path, budget: Budget) -> list[Entry]:
    """The file entries to extract into `dest`, after refusing anything unsafe or implausible."""
    if budget.entries + len(entries) > MAX_ENTRIES:
        raise DataError(f"{archive}: {budget.entries + len(entries):,} entries, more than the limit of {MAX_ENTRIES:,}; "
                        "refusing to unpack")
    seen: set[str] = set()
    folders: set[str] = set()
    files = []
    total = 0
    for entry in entries:
        name = PurePosixPath(entry.name)
        if (name.is_absolute() or ".." in name.parts or entry.is_special or "\\" in entry.name or "\0" in entry.name
                or not name.parts):
            raise DataError(f"{archive}: entry {entry.name!r} would escape the data folder; refusing to unpack")
        key = name.as_posix().rstrip("/")
        if key in seen:
            raise DataError(f"{archive}: entry {entry.name!r} appears twice; refusing to unpack an ambiguous archive")
        seen.add(key)
        folders.update(parent.as_posix() for parent in PurePosixPath(key).parents if parent.parts)
        if entry.is_dir:
            folders.add(key)
            continue
        if entry.size > MAX_ENTRY_BYTES:
            raise DataError(f"{archive}: entry {entry.name!r} unpacks to {entry.size / GIB:.1f} GiB, more than "
                            f"the per-file limit of {MAX_ENTRY_BYTES / GIB:.0f} GiB; refusing to unpack")
        if (entry.compressed is not None and entry.size > RATIO_FLOOR_BYTES
                and entry.size > MAX_RATIO * max(entry.compressed, 1)):
            raise DataError(f"{archive}: entry {entry.name!r} expands {entry.size / max(entry.compressed, 1):,.0f}-fold "
                            f"(limit {MAX_RATIO}); this looks like a zip bomb, refusing to unpack")
        total += entry.size
        files.append(entry)
    for entry in files:
        key = PurePosixPath(entry.name).as_posix()
        if key in folders:
            raise DataError(f"{archive}: '{key}' is both a file and a folder; refusing to unpack an ambiguous archive")
        target = dest / Path(*PurePosixPath(key).parts)
        if target.exists() or any(p.is_file() for p in target.parents if dest in p.parents):
            raise DataError(f"{archive}: entry {entry.name!r} would overwrite {target}, unpacked before; "
                            "refusing to unpack an ambiguous download")
    if budget.bytes + total > budget.total_limit:
        raise DataError(f"{archive}: unpacks to {_size(budget.bytes + total)} in all, more than the limit of "
                        f"{_size(budget.total_limit)}; if the competition really is this large, raise KPIPE_UNZIP_LIMIT_GB")
    free = shutil.disk_usage(dest if dest.exists() else dest.parent).free
    if total > free:
        raise DataError(f"{archive}: unpacks to {_size(total)} but {dest} has {_size(free)} free; "
                        "free some space (`make prune COMP=...` removes unused outputs)")
    if not files and not budget.files:
        raise DataError(f"{archive}: the archive holds no files")
    budget.entries += len(entries)
    budget.bytes += total
    return files


# --- writing ------------------------------------------------------------------------------------------------


class _BoundedFile:
    """A file that refuses more bytes than the entry's header announced (`never trust the header`)."""

    def __init__(self, target: Path, entry: Entry, archive: Path):
        target.parent.mkdir(parents=True, exist_ok=True)
        self.out = open(target, "wb")
        self.entry, self.archive, self.written = entry, archive, 0

    def write(self, data) -> int:
        self.written += len(data)
        if self.written > self.entry.size:
            raise DataError(f"{self.archive}: entry {self.entry.name!r} holds more data than its header says; "
                            "refusing to unpack")
        return self.out.write(data)

    def close(self) -> None:
        self.out.close()


def _stream(read: Callable[[Entry], BinaryIO], entry: Entry, target: Path, archive: Path) -> int:
    out = _BoundedFile(target, entry, archive)
    try:
        with read(entry) as source:
            while chunk := source.read(CHUNK):
                out.write(chunk)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, tarfile.TarError, EOFError, NotImplementedError,
            RuntimeError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise  # the disk refused: the caller's handler names it
        raise DataError(f"{archive}: entry {entry.name!r} is corrupt or unsupported ({_reason(exc)}); "
                        "delete the archive and download again") from None
    finally:
        out.close()
    return out.written


def _extract_7z(path: Path, files: list[Entry], dest: Path) -> dict[str, int]:
    """py7zr decompresses each folder into the writers our factory hands it: bounded files in `dest`."""
    import py7zr
    from py7zr.io import Py7zIO, WriterFactory

    wanted = {entry.name: entry for entry in files}
    opened: dict[str, _BoundedFile] = {}

    class Writer(Py7zIO):
        def __init__(self, entry: Entry):
            self.file = opened[entry.name] = _BoundedFile(dest / Path(*PurePosixPath(entry.name).parts), entry, path)

        def write(self, s) -> int:
            return self.file.write(s)

        def read(self, size=None) -> bytes:
            return b""

        def seek(self, offset, whence=0) -> int:
            return self.file.written

        def flush(self) -> None:
            self.file.out.flush()

        def size(self) -> int:
            return self.file.written

        def close(self) -> None:
            self.file.close()

    class Factory(WriterFactory):
        def create(self, filename: str) -> Py7zIO:
            if filename not in wanted:
                raise DataError(f"{path}: entry {filename!r} was not in the archive's listing; refusing to unpack")
            return Writer(wanted[filename])

    try:
        with py7zr.SevenZipFile(path) as archive:
            archive.extract(targets=list(wanted), factory=Factory())
    except DataError:
        raise
    except Exception as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise
        raise DataError(f"{path}: corrupt or unsupported 7z data ({_reason(exc)}); delete it and download again") from None
    finally:
        for file in opened.values():
            file.close()
    missing = [entry.name for entry in files if entry.name not in opened]
    if missing:
        raise DataError(f"{path}: entry {missing[0]!r} could not be unpacked; delete the archive and download again")
    return {name: file.written for name, file in opened.items()}


def unpack(path: Path, dest: Path, budget: Budget) -> dict[str, int]:
    """Unpack one archive into `dest` after `check_entries`; returns {name relative to dest: size}."""
    entries, read, close = _open(path)
    try:
        files = check_entries(entries, path, dest, budget)
        if read is None:
            written = _extract_7z(path, files, dest)
        else:
            written = {entry.name: _stream(read, entry, dest / Path(*PurePosixPath(entry.name).parts), path)
                       for entry in files}
    finally:
        close()
    return {PurePosixPath(name).as_posix(): size for name, size in written.items()}


def unpack_all(path: Path, dest: Path, budget: Budget | None = None) -> dict[str, int]:
    """Unpack `path` into `dest`, then every archive it held, each into the folder it lay in, in place
    of the archive (up to MAX_DEPTH levels); returns {file relative to dest: size} of what remains."""
    budget = budget or Budget()
    budget.files.update(unpack(path, dest, budget))
    return unpack_nested(dest, budget)


def link_all(source: Path, dest: Path, budget: Budget | None = None) -> dict[str, int]:
    """The files of a folder that is read-only and already unpacked once (a Kaggle notebook's
    /kaggle/input/<competition>/) linked into `dest`, not copied; the archives among them unpacked in place
    as `unpack_all` unpacks a download's. Returns {file relative to dest: size}."""
    budget = budget or Budget()
    for path in sorted(source.rglob("*")):
        if path.is_file():
            name = path.relative_to(source).as_posix()
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            (dest / name).symlink_to(path)
            budget.files[name] = path.stat().st_size
    return unpack_nested(dest, budget)  # Kaggle unpacked the download itself: its files are the first level


def unpack_nested(dest: Path, budget: Budget) -> dict[str, int]:
    """Unpack every archive among `budget.files` (the download's files, under `dest`) into the folder it
    lies in, in place of the archive, and then those they held, up to MAX_DEPTH levels in all."""
    for depth in range(1, MAX_DEPTH + 1):
        nested = sorted(name for name in budget.files if is_archive(name))
        if not nested:
            return budget.files
        if depth == MAX_DEPTH:
            raise DataError(f"{dest / nested[0]}: archives nested more than {MAX_DEPTH} deep; refusing to unpack further")
        for name in nested:
            inner = dest / name
            parent = PurePosixPath(name).parent
            del budget.files[name]
            unpacked = unpack(inner, inner.parent, budget)
            inner.unlink()
            budget.files.update({(parent / child).as_posix(): size for child, size in unpacked.items()})
    return budget.files

