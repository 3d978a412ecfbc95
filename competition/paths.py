"""Where things live on disk. All generated state sits under one gitignored folder, `.data/` by default."""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


KAGGLE_INPUT = Path("/kaggle/input")


def in_kaggle_kernel() -> bool:
    """Whether this process runs in a Kaggle notebook or script kernel (Kaggle sets KAGGLE_KERNEL_RUN_TYPE;
    so does the local host's kernel runner)."""
    return bool(os.environ.get("KAGGLE_KERNEL_RUN_TYPE"))


def kaggle_input_root() -> Path | None:
    """Where a kernel finds its attached competitions and datasets: $KAGGLE_INPUT_ROOT, else /kaggle/input
    when it exists; None elsewhere."""
    if os.environ.get("KAGGLE_INPUT_ROOT"):
        return Path(os.environ["KAGGLE_INPUT_ROOT"])
    return KAGGLE_INPUT if KAGGLE_INPUT.is_dir() else None


def data_root() -> Path:
    """Root of downloaded and derived data ($KPIPE_DATA; in a Kaggle kernel kpipe-data/ in its working
    directory, which becomes the kernel's output; else <repo>/.data)."""
    if os.environ.get("KPIPE_DATA"):
        return Path(os.environ["KPIPE_DATA"])
    return Path.cwd() / "kpipe-data" if in_kaggle_kernel() else REPO_ROOT / ".data"


def host_root() -> Path:
    """State of the local Kaggle host ($KPIPE_HOST_ROOT, default ~/.local/share/kpipe-host).

    Per user, not per checkout: port 80 has room for one host, and every clone must find its credentials."""
    if os.environ.get("KPIPE_HOST_ROOT"):
        return Path(os.environ["KPIPE_HOST_ROOT"])
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "kpipe-host"


def competition_root(name: str) -> Path:
    return data_root() / name


def submissions_root() -> Path:
    """$KPIPE_SUBMISSIONS; in a Kaggle kernel submissions/ in its working directory; else <repo>/submissions."""
    if os.environ.get("KPIPE_SUBMISSIONS"):
        return Path(os.environ["KPIPE_SUBMISSIONS"])
    return Path.cwd() / "submissions" if in_kaggle_kernel() else REPO_ROOT / "submissions"
