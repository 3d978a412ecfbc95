"""download: fetch a competition's files through the Kaggle API into <data>/<comp>/raw/, safely unpacked.

Skipped when raw/ holds a manifest whose listed files are all present with their recorded sizes. In a
Kaggle kernel that has the competition attached (/kaggle/input/<slug>/), raw/ links those files instead
of downloading them.
The archive is untrusted, and so are the archives inside it (stages/archives.py unpacks them all): any
problem is refused with one line, before or while unpacking, leaving no raw/ behind.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from competition.errors import KaggleError
from competition.kaggle_adapter import Competition, call, host_description, kaggle_api
from competition.paths import competition_root, kaggle_input_root
from pipelines.stages.archives import link_all, unpack_all
from pipelines.stages.artifacts import atomic_output, build_once, read_manifest

RAW = "raw"


def raw_dir(spec: Competition) -> Path:
    return competition_root(spec.name) / RAW


def raw_is_complete(folder: Path) -> bool:
    manifest = read_manifest(folder)
    if manifest is None or not isinstance(manifest.get("files"), dict):
        return False
    return all((folder / name).is_file() and (folder / name).stat().st_size == size for name, size in manifest["files"].items())


def download(spec: Competition, force: bool = False, start_local_host: bool = True) -> Path:
    """Download and unzip the competition's files; returns the raw folder."""
    folder = raw_dir(spec)

    def up_to_date() -> Path:
        print(f"download: {spec.name}: up to date ({folder})")
        return folder

    return build_once(folder, f"the download of {spec.name}", lambda: _fetch(spec, folder, start_local_host),
                      up_to_date, force, complete=raw_is_complete)


def attached_input(spec: Competition) -> Path | None:
    """The competition's (or dataset's) files as a Kaggle kernel has them attached, under
    /kaggle/input/<slug>/; None outside a kernel or when they are not attached."""
    root = kaggle_input_root()
    if root is None:
        return None
    folder = root / spec.kaggle_slug.rsplit("/", 1)[-1]
    return folder if folder.is_dir() and any(folder.iterdir()) else None


def _link_attached(spec: Competition, source: Path, folder: Path) -> Path:
    """raw/ from the attached files: linked, not copied (they are read-only and may be large), archives
    among them unpacked as a download's are."""
    print(f"download: {spec.name}: using the files attached to this kernel in {source}; nothing downloaded")
    listing: dict = {"attached": str(source)}
    with atomic_output(folder, "download", {"kaggle_slug": spec.kaggle_slug, "attached": str(source)}, inputs={},
                       extra=listing, replace=True) as staging:
        listing["files"] = files = link_all(source, staging)
    print(f"download: {spec.name}: {len(files)} files in {folder}")
    return folder


def _fetch(spec: Competition, folder: Path, start_local_host: bool) -> Path:
    attached = attached_input(spec)
    if attached is not None:
        return _link_attached(spec, attached, folder)
    api = kaggle_api(spec, start_local_host=start_local_host)
    # The archive is fetched beside raw/ (same file system, counted by the disk check) and removed after.
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=folder.parent) as tmp:
        print(f"download: {spec.name}: fetching '{spec.kaggle_slug}' from {host_description(spec)}")
        if getattr(spec, "source", "competition") == "dataset":  # an Endpoint (make init) is a competition
            fetch = lambda: api.dataset_download_files(spec.kaggle_slug, path=tmp, force=True, quiet=False)  # noqa: E731
        else:
            fetch = lambda: api.competition_download_files(spec.kaggle_slug, path=tmp, force=True, quiet=False)  # noqa: E731
        call(spec, f"downloading the files of '{spec.kaggle_slug}'", fetch)
        zips = sorted(Path(tmp).glob("*.zip"))
        if not zips:
            raise KaggleError(f"download of '{spec.kaggle_slug}' from {host_description(spec)} produced no zip file")
        config = {"kaggle_slug": spec.kaggle_slug, "host": spec.host}
        # The file list goes into the manifest so a later run can check completeness without the network.
        listing: dict = {"archive": zips[0].name}
        with atomic_output(folder, "download", config, inputs={}, extra=listing, replace=True) as staging:
            listing["files"] = files = unpack_all(zips[0], staging)
    print(f"download: {spec.name}: {len(files)} files in {folder}")
    return folder
