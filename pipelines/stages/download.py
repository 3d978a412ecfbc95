"""download: fetch a competition's files through the Kaggle API into <data>/<comp>/raw/, safely unzipped.

Skipped when raw/ holds a manifest whose listed files are all present with their recorded sizes.
The archive is untrusted: entries that would land outside raw/, links, duplicate names, more entries or
more uncompressed bytes than a competition plausibly holds, a compression ratio that only a bomb has,
and corrupt data (CRC) are all refused with one line, before or while unzipping, leaving no raw/ behind.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from competition.errors import DataError, KaggleError
from competition.kaggle_adapter import call, host_description, kaggle_api
from competition.paths import competition_root
from competition.spec import CompetitionSpec
from pipelines.stages.artifacts import atomic_output, build_once, read_manifest

RAW = "raw"
MAX_ENTRIES = 500_000
MAX_ENTRY_BYTES = 8 << 30
MAX_RATIO = 200  # uncompressed / compressed, for entries above RATIO_FLOOR_BYTES; images and arrays stay far below
RATIO_FLOOR_BYTES = 1 << 20
GIB = 1 << 30


def max_total_bytes() -> int:
    """Largest total the unzipped competition may have ($KPIPE_UNZIP_LIMIT_GB, default 32 GiB)."""
    value = os.environ.get("KPIPE_UNZIP_LIMIT_GB", "32")
    try:
        return int(float(value) * GIB)
    except ValueError:
        raise DataError(f"KPIPE_UNZIP_LIMIT_GB={value!r}: must be a number of GiB, e.g. 64") from None


def raw_dir(spec: CompetitionSpec) -> Path:
    return competition_root(spec.name) / RAW


def raw_is_complete(folder: Path) -> bool:
    manifest = read_manifest(folder)
    if manifest is None or not isinstance(manifest.get("files"), dict):
        return False
    return all((folder / name).is_file() and (folder / name).stat().st_size == size for name, size in manifest["files"].items())


def check_archive(archive: zipfile.ZipFile, zip_path: Path, dest: Path) -> list[zipfile.ZipInfo]:
    """The entries to extract, after refusing anything unsafe or implausible; nothing is written here."""
    infos = archive.infolist()
    if len(infos) > MAX_ENTRIES:
        raise DataError(f"{zip_path}: {len(infos):,} entries, more than the limit of {MAX_ENTRIES:,}; refusing to unzip")
    seen: set[str] = set()
    total = 0
    files = []
    for info in infos:
        name = PurePosixPath(info.filename)
        is_symlink = (info.external_attr >> 16) & 0o170000 == 0o120000
        if (name.is_absolute() or ".." in name.parts or is_symlink or "\\" in info.filename or "\0" in info.filename
                or not name.parts):
            raise DataError(f"{zip_path}: entry {info.filename!r} would escape the data folder; refusing to unzip")
        key = name.as_posix().rstrip("/")
        if key in seen:
            raise DataError(f"{zip_path}: entry {info.filename!r} appears twice; refusing to unzip an ambiguous archive")
        seen.add(key)
        if info.is_dir():
            continue
        if info.file_size > MAX_ENTRY_BYTES:
            raise DataError(f"{zip_path}: entry {info.filename!r} unzips to {info.file_size / GIB:.1f} GiB, more than "
                            f"the per-file limit of {MAX_ENTRY_BYTES / GIB:.0f} GiB; refusing to unzip")
        if info.file_size > RATIO_FLOOR_BYTES and info.file_size > MAX_RATIO * max(info.compress_size, 1):
            raise DataError(f"{zip_path}: entry {info.filename!r} expands {info.file_size / max(info.compress_size, 1):,.0f}-fold "
                            f"(limit {MAX_RATIO}); this looks like a zip bomb, refusing to unzip")
        total += info.file_size
        files.append(info)
    if total > max_total_bytes():
        raise DataError(f"{zip_path}: unzips to {total / GIB:.1f} GiB, more than the limit of {max_total_bytes() / GIB:.0f} GiB; "
                        "if the competition really is this large, raise KPIPE_UNZIP_LIMIT_GB")
    free = shutil.disk_usage(dest if dest.exists() else dest.parent).free
    if total > free:
        raise DataError(f"{zip_path}: unzips to {total / GIB:.2f} GiB but {dest.parent} has {free / GIB:.2f} GiB free; "
                        "free some space (`make prune COMP=...` removes unused outputs)")
    if not files:
        raise DataError(f"{zip_path}: the archive holds no files")
    return files


def safe_extract(zip_path: Path, dest: Path) -> dict[str, int]:
    """Unzip the checked entries into `dest`; returns {name: size}. Raises DataError on any problem."""
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{zip_path}: not a valid zip file ({exc}); delete it and download again") from None
    extracted: dict[str, int] = {}
    with archive:
        for info in check_archive(archive, zip_path, dest):
            name = PurePosixPath(info.filename)
            target = dest / Path(*name.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            written = 0
            try:
                with archive.open(info) as src, open(target, "wb") as out:
                    while chunk := src.read(1 << 20):
                        written += len(chunk)
                        if written > info.file_size:  # never trust the header's size
                            raise DataError(f"{zip_path}: entry {info.filename!r} holds more data than its header says; "
                                            "refusing to unzip")
                        out.write(chunk)
            except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError, RuntimeError) as exc:
                raise DataError(f"{zip_path}: entry {info.filename!r} is corrupt or unsupported ({exc}); "
                                "delete the archive and download again") from None
            extracted[name.as_posix()] = written
    return extracted


def download(spec: CompetitionSpec, force: bool = False, start_local_host: bool = True) -> Path:
    """Download and unzip the competition's files; returns the raw folder."""
    folder = raw_dir(spec)

    def up_to_date() -> Path:
        print(f"download: {spec.name}: up to date ({folder})")
        return folder

    return build_once(folder, f"the download of {spec.name}", lambda: _fetch(spec, folder, start_local_host),
                      up_to_date, force, complete=raw_is_complete)


def _fetch(spec: CompetitionSpec, folder: Path, start_local_host: bool) -> Path:
    api = kaggle_api(spec, start_local_host=start_local_host)
    # The archive is fetched beside raw/ (same file system, counted by the disk check) and removed after.
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=folder.parent) as tmp:
        print(f"download: {spec.name}: fetching '{spec.kaggle_slug}' from {host_description(spec)}")
        call(spec, f"downloading the files of '{spec.kaggle_slug}'",
             lambda: api.competition_download_files(spec.kaggle_slug, path=tmp, force=True, quiet=False))
        zips = sorted(Path(tmp).glob("*.zip"))
        if not zips:
            raise KaggleError(f"download of '{spec.kaggle_slug}' from {host_description(spec)} produced no zip file")
        config = {"kaggle_slug": spec.kaggle_slug, "host": spec.host}
        # The file list goes into the manifest so a later run can check completeness without the network.
        listing: dict = {"archive": zips[0].name}
        with atomic_output(folder, "download", config, inputs={}, extra=listing, replace=True) as staging:
            listing["files"] = files = safe_extract(zips[0], staging)
    print(f"download: {spec.name}: {len(files)} files in {folder}")
    return folder
