"""Whether arrays of a given size are kept in memory or on disk, memory-mapped (KPIPE_MEMMAP)."""
from __future__ import annotations

import os

# Arrays above this share of the machine's memory stay on disk (KPIPE_MEMMAP=auto). Loaded into memory they
# peak near ten times their size (a second uint8 layout, float32 statistics over a transposed copy), so
# 5% keeps that peak under half the memory.
MEMMAP_SHARE = 0.05


def memory_mapped(nbytes: int) -> bool:
    """Whether arrays of `nbytes` stay on disk: KPIPE_MEMMAP=1 / 0, or (auto) above MEMMAP_SHARE of memory."""
    choice = os.environ.get("KPIPE_MEMMAP", "auto")
    if choice in ("0", "1"):
        return choice == "1"
    return nbytes > MEMMAP_SHARE * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
