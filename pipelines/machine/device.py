"""Device choice, the precision/layout options a model can run in, and what this machine is.

A precision is how a model's forward pass runs: fp32 or bf16/fp16 autocast, NCHW or channels_last.
Which is fastest depends on the machine — on the 2-core CPUs measured so far, channels_last gave
+7–11% on an AVX2-only CPU and bf16 autocast was 11× *slower* there, but 1.4–2.1× faster than fp32 on a
CPU with AVX-512 BF16 — so `pipelines/planning/probe.py` measures them and the planner chooses. A recipe names
one (`precision:`) or says `auto`: fp32 + channels_last on a CPU, bf16 (or fp16) autocast on CUDA.
"""
from __future__ import annotations

import hashlib
import os
import platform
import shutil
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pipelines.machine import cores
from pipelines.machine.cores import CoreShare


@dataclass(frozen=True)
class Precision:
    name: str
    amp_dtype: torch.dtype | None  # autocast dtype; None = fp32
    channels_last: bool


PRECISIONS = {p.name: p for p in (
    Precision("fp32", None, False),
    Precision("fp32-cl", None, True),
    Precision("bf16-cl", torch.bfloat16, True),
    Precision("fp16-cl", torch.float16, True),  # CUDA only: autocast fp16 needs a GradScaler, which train.py adds
)}
AUTO = "auto"


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    # This process's share of the CPU's cores (joined by `pick_runtime` on a CPU; unused on CUDA).
    cores: CoreShare = field(default_factory=CoreShare, compare=False, repr=False)

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def precision(self, name: str = AUTO) -> Precision:
        """The named precision, or this device's default for `auto`."""
        if name != AUTO:
            return PRECISIONS[name]
        if self.is_cuda:
            return PRECISIONS["bf16-cl" if torch.cuda.is_bf16_supported() else "fp16-cl"]
        return PRECISIONS["fp32-cl"]

    @property
    def amp_dtype(self) -> torch.dtype | None:  # the default precision's autocast dtype (for messages)
        return self.precision().amp_dtype


def wants_cuda() -> bool:
    """Whether this command computes on CUDA: when there is a GPU, unless KPIPE_DEVICE=cpu|cuda says."""
    wanted = os.environ.get("KPIPE_DEVICE")
    return torch.cuda.is_available() if wanted is None else wanted == "cuda"


def pick_runtime(share: CoreShare | None = None) -> Runtime:
    """CUDA when there is a GPU, else the CPU with this process's share of its cores (`share`, the
    command's, joined here; a new one when none is given: machine/cores.py, every core when no other
    kpipe process computes). KPIPE_DEVICE=cpu|cuda overrides the choice."""
    from pipelines.machine import ddp, determinism

    share = share if share is not None else CoreShare()

    use_cuda = wants_cuda()
    if determinism.requested():  # DETERMINISTIC=1: repeatable kernels, at some cost in speed
        determinism.enable(use_cuda)
    if use_cuda:
        torch.backends.cudnn.benchmark = not determinism.requested()
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        share.join()  # x1.93 from 1 to 2 threads alone on these machines; 80x slower each when two processes take both
    # One rank of a DDP run (GPUS=, torchrun): its own GPU, or gloo between CPU processes.
    if ddp.launched():
        return Runtime(ddp.start(use_cuda), share)
    if not use_cuda:
        return Runtime(torch.device("cpu"), share)
    # A Dask worker's own GPU (pipelines/execution/cluster.py pins worker k to GPU k), else the first.
    device = torch.device("cuda", int(os.environ.get("KPIPE_CUDA_DEVICE", "0")) % torch.cuda.device_count())
    torch.cuda.set_device(device)
    return Runtime(device, share)


def default_profile() -> str:
    return "full" if torch.cuda.is_available() and os.environ.get("KPIPE_DEVICE") != "cpu" else "quick"


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def offered_precisions(runtime: Runtime) -> tuple[list[str], dict[str, str]]:
    """(precisions worth measuring here, {precision left out: why})."""
    if runtime.is_cuda:
        if torch.cuda.is_bf16_supported():
            return ["fp32-cl", "bf16-cl"], {"fp16-cl": "bf16 is supported: same speed, no loss scaling needed",
                                            "fp32": "channels_last is the layout cuDNN's tensor-core kernels want"}
        return ["fp32-cl", "fp16-cl"], {"bf16-cl": "this GPU has no bf16", "fp32": "channels_last is faster on CUDA"}
    flags = cpu_flags()
    offered = ["fp32", "fp32-cl"]
    left_out = {"fp16-cl": "fp16 autocast is for CUDA"}
    if flags & {"avx512_bf16", "amx_bf16"}:
        offered.append("bf16-cl")
    else:
        left_out["bf16-cl"] = "this CPU lacks avx512_bf16/amx_bf16 (bf16 ran 11x slower than fp32 on such a CPU)"
    return offered, left_out


def compile_offered(runtime: Runtime) -> str | None:
    """None where torch.compile can run here, else why not (inductor builds C++ kernels on a CPU, and
    Triton kernels on CUDA)."""
    if runtime.is_cuda:
        try:
            import triton  # noqa: F401
        except ImportError:
            return "Triton is not installed"
        return None
    if not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        return "no C++ compiler (inductor builds its CPU kernels with one; Debian: g++)"
    if not Path(sysconfig.get_path("include"), "Python.h").is_file():
        return "no Python headers (inductor builds its CPU kernels against them; Debian: python3-dev)"
    return None


def machine_description(runtime: Runtime) -> str:
    if runtime.is_cuda:
        return f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda}), torch {torch.__version__}"
    flags = cpu_flags()
    isa = "AVX-512 BF16" if flags & {"avx512_bf16", "amx_bf16"} else "AVX-512" if "avx512f" in flags else \
        "AVX2" if "avx2" in flags else "no AVX2"
    return f"{cpu_name()}, {os.cpu_count()} cores, {isa}, torch {torch.__version__}"


def machine_key(runtime: Runtime) -> str:
    """Names what timings depend on: the processor and its features, the core count, torch."""
    identity = [machine_description(runtime), cores.machine_cores()]  # the machine's, not today's share
    if not runtime.is_cuda:
        identity.append(sorted(cpu_flags()))
    return hashlib.sha256(repr(identity).encode()).hexdigest()[:12]
