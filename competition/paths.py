"""Where things live on disk. All generated state sits under one gitignored folder, `.data/` by default."""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def data_root() -> Path:
    """Root of downloaded and derived data ($KPIPE_DATA, default <repo>/.data)."""
    return Path(os.environ.get("KPIPE_DATA") or REPO_ROOT / ".data")


def host_root() -> Path:
    """State of the local Kaggle host ($KPIPE_HOST_ROOT, default ~/.local/share/kpipe-host).

    Per user, not per checkout: port 80 has room for one host, and every clone must find its credentials."""
    if os.environ.get("KPIPE_HOST_ROOT"):
        return Path(os.environ["KPIPE_HOST_ROOT"])
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "kpipe-host"


def competition_root(name: str) -> Path:
    return data_root() / name


def submissions_root() -> Path:
    return Path(os.environ.get("KPIPE_SUBMISSIONS") or REPO_ROOT / "submissions")
