"""make wheelhouse: kpipe, and the wheels of everything it needs but torch, as a Kaggle dataset.

In an offline notebook, with the dataset attached:

    !pip install --no-index --find-links /kaggle/input/kpipe-wheelhouse kpipe

Writes .data/wheelhouse/ (rewritten whole, or not at all):
    kpipe-<version>-py3-none-any.whl   kpipe's code and its shipped specs, built from this checkout
    <dependency>.whl ...               every distribution kpipe needs, pinned to the versions installed here
                                       (the ones the tests ran with); torch and torchvision are left out: every
                                       Kaggle image has them, built for its GPUs, and a CPU build would replace them
    requirements.txt                   those pins
    kpipe-package.json                 each file's SHA-256 and the house's digest (publishing skips an unchanged house)
    dataset-metadata.json              id <owner>/kpipe-wheelhouse

The dependency wheels are built once per set of pins and kept in ~/.cache/kpipe/wheels/<pins digest>/
($KPIPE_WHEEL_CACHE)
(pip takes half a minute to gather them); kpipe's own wheel is built from a copy of its sources each time.
Wheels of compiled packages are for one Python version: PYTHON_VERSION=3.12 gathers them for a notebook whose
Python is 3.12 (`!python --version` there says which).

    python -m pipelines.tools.wheelhouse [--python-version 3.11] [--publish local|kaggle]
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.metadata as metadata
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from competition import atomic, disk, locks
from competition.cli import OneLineParser
from competition.errors import KaggleError, UserError
from competition.kaggle_adapter import Endpoint, kaggle_api, kaggle_username
from competition.kaggle_kernels import PACKAGE_FILE, Published, file_digests, publish_dataset
from competition.paths import REPO_ROOT, data_root
from pipelines.after_run.export import read_json

SLUG = "kpipe-wheelhouse"
PROVIDED_BY_KAGGLE = ("torch", "torchvision")  # and what only they need
SOURCES = ("competition", "pipelines", "models", "pyproject.toml", "README.md")
WHEEL_TIME = 315532800  # 1980-01-01, the earliest a zip can say


def _key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned_requirements() -> list[str]:
    """`name==version` for every distribution kpipe needs (its dependencies' too, for this platform and
    no extras), as installed in this environment, but torch, torchvision and what only they need."""
    from packaging.requirements import Requirement

    def needs(name: str) -> list[str]:
        requires = metadata.distribution(name).requires or []
        return [req.name for req in map(Requirement, requires) if not req.marker or req.marker.evaluate({"extra": ""})]

    pins: dict[str, str] = {}
    stack = needs("kpipe")
    while stack:
        name = stack.pop()
        if _key(name) in pins or _key(name) in PROVIDED_BY_KAGGLE:
            continue
        try:
            pins[_key(name)] = metadata.version(name)
        except metadata.PackageNotFoundError:
            raise UserError(f"kpipe needs '{name}', which is not installed here; run `make install` first") from None
        stack += needs(name)
    return [f"{name}=={version}" for name, version in sorted(pins.items())]


def _pip(*args: str, env: dict | None = None) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", *args, "--quiet", "--disable-pip-version-check"],
                          capture_output=True, text=True, env=env)
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.startswith("ERROR")] or done.stderr.splitlines()[-1:]
        raise UserError(f"pip {args[0]} failed: {' '.join(lines)[:400]}")


def dependency_wheels(pins: list[str], python_version: str | None) -> Path:
    """The pinned dependencies' wheels, gathered once per set of pins and Python version."""
    digest = hashlib.sha256(("\n".join(pins) + f"\n{python_version}").encode()).hexdigest()[:16]
    folder = wheel_cache() / digest
    with locks.hold(folder, "the dependency wheels"):
        if (folder / ".complete").is_file():
            return folder
        shutil.rmtree(folder, ignore_errors=True)
        with tempfile.TemporaryDirectory(prefix="kpipe-wheels-") as tmp:
            requirements = Path(tmp) / "requirements.txt"
            requirements.write_text("".join(f"{pin}\n" for pin in pins))
            staging = Path(tmp) / "wheels"
            if python_version and python_version != f"{sys.version_info.major}.{sys.version_info.minor}":
                # Another Python: binary wheels for it, pure-Python wheels built here for what has none.
                _pip("download", "--no-deps", "--only-binary=:all:", "--python-version", python_version,
                     "--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_28_x86_64", "-d", str(staging),
                     "-r", str(requirements))
            else:
                _pip("wheel", "--no-deps", "-w", str(staging), "-r", str(requirements))
            folder.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(staging, folder)
        (folder / ".complete").touch()
    return folder


def wheel_cache() -> Path:
    """Where gathered dependency wheels are kept ($KPIPE_WHEEL_CACHE, default ~/.cache/kpipe/wheels)."""
    return Path(os.environ.get("KPIPE_WHEEL_CACHE") or Path.home() / ".cache" / "kpipe" / "wheels")


def kpipe_wheel(dest: Path) -> Path:
    """kpipe's wheel, built from a copy of its sources (a build in the checkout would leave build/ there)."""
    with tempfile.TemporaryDirectory(prefix="kpipe-source-") as tmp:
        for name in SOURCES:
            source = REPO_ROOT / name
            if source.is_dir():
                shutil.copytree(source, Path(tmp) / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copyfile(source, Path(tmp) / name)
        # A fixed time in the zip: the same sources make the same bytes, and an unchanged house is not uploaded again.
        _pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(dest), tmp,
             env={**os.environ, "SOURCE_DATE_EPOCH": str(WHEEL_TIME)})
    [wheel] = dest.glob("kpipe-*.whl")
    return wheel


def build(owner: str, python_version: str | None = None) -> Path:
    """.data/wheelhouse/: kpipe's wheel and its dependencies', ready for `kaggle datasets create`."""
    pins = pinned_requirements()
    wheels = dependency_wheels(pins, python_version)
    final = data_root() / "wheelhouse"
    with locks.hold(final, "the wheelhouse"), atomic.staged_folder(final) as staging:
        for wheel in sorted(wheels.glob("*.whl")):
            shutil.copyfile(wheel, staging / wheel.name)
        kpipe_wheel(staging)
        (staging / "requirements.txt").write_text("".join(f"{pin}\n" for pin in pins))
        atomic.write_json(staging / PACKAGE_FILE, file_digests(staging))
        atomic.write_json(staging / "dataset-metadata.json", {
            "title": "kpipe wheelhouse", "id": f"{owner}/{SLUG}", "licenses": [{"name": "CC0-1.0"}],
            "description": "kpipe and the wheels it needs besides torch: pip install --no-index --find-links "
                           f"/kaggle/input/{SLUG} kpipe"})
        atomic.publish_folder(staging, final, replace=True)
    return final


def publish(endpoint: Endpoint, api, folder: Path) -> Published:
    """The house as <you>/kpipe-wheelhouse: a new version only when its digest changed."""
    digest = read_json(folder / PACKAGE_FILE)["digest"]
    ref = f"{kaggle_username(endpoint)}/{SLUG}"
    return publish_dataset(endpoint, api, folder, ref, digest, f"wheelhouse {digest}")


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="make wheelhouse", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python-version", default=None, help="the notebook's Python, e.g. 3.12 (default: this one's)")
    parser.add_argument("--publish", choices=("local", "kaggle"), default=None,
                        help="publish it as <you>/kpipe-wheelhouse on this host")
    args = parser.parse_args(argv)
    if args.python_version is not None and not re.fullmatch(r"3\.\d{1,2}", args.python_version):
        parser.error(f"--python-version {args.python_version!r}: give the notebook's Python as 3.X, e.g. 3.12")
    disk.keep_writes_failing_instead_of_dying()
    try:
        endpoint = Endpoint("wheelhouse", SLUG, args.publish or "local")
        owner = kaggle_username(endpoint) or "you"
        folder = build(owner, args.python_version)
        size = sum(p.stat().st_size for p in folder.glob("*.whl"))
        print(f"wheelhouse: {len(list(folder.glob('*.whl')))} wheels, {size / 1e6:.0f} MB -> {folder}")
        if args.publish:
            published = publish(endpoint, kaggle_api(endpoint), folder)
            print(f"wheelhouse: dataset {published.ref} version {published.version}: "
                  + ("uploaded" if published.uploaded else "holds this house already, nothing uploaded"))
        else:
            print(f"wheelhouse: publish it with `make wheelhouse PUBLISH=local|kaggle` (or `kaggle datasets create -p {folder}`)")
    except (UserError, KaggleError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
