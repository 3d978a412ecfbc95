"""download: fetch a competition's files through the Kaggle API into <data>/<comp>/raw/, safely unzipped.

Skipped when raw/ holds a manifest whose listed files are all present with their recorded sizes.
"""
from __future__ import annotations

import shutil
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from competition.errors import DataError, KaggleError
from competition.kaggle_adapter import describe_request_error, kaggle_api
from competition.paths import competition_root
from competition.spec import CompetitionSpec
from pipelines.artifacts import atomic_output, read_manifest

RAW = "raw"


def raw_dir(spec: CompetitionSpec) -> Path:
    return competition_root(spec.name) / RAW


def raw_is_complete(folder: Path) -> bool:
    manifest = read_manifest(folder)
    if manifest is None or "files" not in manifest:
        return False
    return all((folder / name).is_file() and (folder / name).stat().st_size == size for name, size in manifest["files"].items())


def safe_extract(zip_path: Path, dest: Path) -> dict[str, int]:
    """Unzip, refusing entries that would land outside `dest` (absolute paths, '..', symlinks)."""
    try:
        archive = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile:
        raise DataError(f"{zip_path}: not a valid zip file; delete it and download again") from None
    files: dict[str, int] = {}
    with archive:
        for info in archive.infolist():
            name = PurePosixPath(info.filename)
            is_symlink = (info.external_attr >> 16) & 0o170000 == 0o120000
            if name.is_absolute() or ".." in name.parts or is_symlink or "\\" in info.filename:
                raise DataError(f"{zip_path}: entry {info.filename!r} would escape the data folder; refusing to unzip")
            if info.is_dir():
                continue
            target = dest / Path(*name.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
            files[name.as_posix()] = info.file_size
    if not files:
        raise DataError(f"{zip_path}: the archive holds no files")
    return files


def download(spec: CompetitionSpec, force: bool = False, start_local_host: bool = True) -> Path:
    """Download and unzip the competition's files; returns the raw folder."""
    folder = raw_dir(spec)
    if not force and raw_is_complete(folder):
        print(f"download: {spec.name}: up to date ({folder})")
        return folder
    api = kaggle_api(spec, start_local_host=start_local_host)
    with tempfile.TemporaryDirectory(prefix="kpipe-download-") as tmp:
        print(f"download: {spec.name}: fetching '{spec.kaggle_slug}' from {'the local host' if spec.host == 'local' else 'kaggle.com'}")
        try:
            api.competition_download_files(spec.kaggle_slug, path=tmp, force=True, quiet=False)
        except Exception as exc:  # the client raises requests errors, ValueError and more
            raise KaggleError(f"download of '{spec.kaggle_slug}' failed: {describe_request_error(exc, spec)}") from None
        zips = sorted(Path(tmp).glob("*.zip"))
        if not zips:
            raise KaggleError(f"download of '{spec.kaggle_slug}' produced no zip file in {tmp}")
        config = {"kaggle_slug": spec.kaggle_slug, "host": spec.host}
        # The file list goes into the manifest so a later run can check completeness without the network.
        listing: dict = {"archive": zips[0].name}
        with atomic_output(folder, "download", config, inputs={}, extra=listing) as staging:
            listing["files"] = files = safe_extract(zips[0], staging)
    print(f"download: {spec.name}: {len(files)} files in {folder}")
    return folder
