"""DETERMINISTIC=1: the same command twice gives byte-identical checkpoints, on a GPU too.

On CUDA, speed comes from choices that vary between runs: cuDNN's autotuner (`benchmark`) may pick a
different convolution algorithm each time, and some kernels add in whatever order their threads finish
(atomics). Deterministic mode turns the autotuner off, asks cuDNN for deterministic algorithms, gives
cuBLAS a fixed workspace (CUBLAS_WORKSPACE_CONFIG, which it reads when it starts) and sets
`torch.use_deterministic_algorithms(True)`: operations with a deterministic but slower implementation
take it, and each operation that has none is named once, as it runs (it then runs its usual kernel
rather than stopping the run, and the line says that its results may vary).

On the CPU our training is already repeatable for a fixed thread count (THREADS=); the mode still sets
the flag, so that an operation without a deterministic implementation is named there too.
"""
from __future__ import annotations

import os
import re
import sys
import warnings

import torch

CUBLAS_WORKSPACE = ":4096:8"
NOT_DETERMINISTIC = re.compile(r"^(.+?) does not have a deterministic implementation")
named: set[str] = set()  # the operations named so far in this process


def requested() -> bool:
    return os.environ.get("KPIPE_DETERMINISTIC", "") not in ("", "0", "false", "no")


def enable(use_cuda: bool) -> None:
    """Switch this process to deterministic kernels and say what that costs."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(True, warn_only=True)
    slower = ["deterministic implementations of the operations that have one (some are slower)"]
    if use_cuda:
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        slower[:0] = ["cuDNN autotuner off (a fixed, possibly slower convolution algorithm)",
                      f"cuBLAS workspace {os.environ['CUBLAS_WORKSPACE_CONFIG']}"]
    if not getattr(warnings.showwarning, "names_operations", False):
        warnings.showwarning = _naming(warnings.showwarning)
    print("deterministic: " + "; ".join(slower), file=sys.stderr, flush=True)


def _naming(show):
    """`warnings.showwarning` that turns torch's not-deterministic alert into one line per operation."""
    def showwarning(message, category, filename, lineno, file=None, line=None):
        found = NOT_DETERMINISTIC.match(str(message))
        if found is None:
            return show(message, category, filename, lineno, file, line)
        if found.group(1) not in named:
            named.add(found.group(1))
            print(f"deterministic: {found.group(1)} has no deterministic implementation on this device; it ran its "
                  "usual kernel, so results may differ between runs", file=sys.stderr, flush=True)

    showwarning.names_operations = True
    return showwarning
