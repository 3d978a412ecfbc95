"""Data-parallel training of one run over several devices: `GPUS=n` (or `torchrun`).

Every rank is a whole `python -m pipelines` process (torchrun starts them and sets RANK, WORLD_SIZE and
LOCAL_RANK); they set up the same context from the same cached data, then train each (run, fold) together:

- each rank holds the uint8 data set (a few tens of MB for these competitions) and, at every step, draws
  and augments the same global batch, then computes on its own contiguous slice of it. The gradients
  DDP averages are then the global batch's, and BatchNorm runs synchronised over the global batch, so a
  run gives one device's result for the same `batch_size` up to float noise (dropout masks aside: each
  rank draws its own);
- validation rows are split between the ranks and the probabilities gathered, so every rank takes the
  same best-epoch, early-stopping and schedule decisions;
- rank 0 alone writes checkpoints, predictions and the fold's folder, and holds the fold's lock; the
  other ranks wait for it and resume from the same `last.pt`.

NCCL on CUDA (one GPU a rank), gloo on the CPU (where ranks share the cores: a way to test, not to gain
speed). `torch.nn.SyncBatchNorm` refuses CPU tensors, so on the CPU its statistics are summed through
an autograd-aware all-reduce instead (`GlooSyncBatchNorm`).
"""
from __future__ import annotations

import os
from datetime import timedelta
from typing import Callable, TypeVar

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

T = TypeVar("T")
TIMEOUT = timedelta(minutes=30)  # a rank may wait this long while rank 0 publishes a fold or another rank loads


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def launched() -> bool:
    """Whether this process is one rank of several (started by torchrun)."""
    return world_size() > 1


def active() -> bool:
    return launched() and dist.is_available() and dist.is_initialized()


def is_main() -> bool:
    return rank() == 0


def start(use_cuda: bool) -> torch.device:
    """Join the process group (once) and return this rank's device."""
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=TIMEOUT,
                                device_id=device if use_cuda else None)
    return device


def stop() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# --- what the training loop asks of it ---------------------------------------------------------------


def share(batch: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous slice of a global batch (the whole batch on one device)."""
    if not active():
        return batch
    return batch.chunk(world_size())[rank()]


def mean(value: torch.Tensor) -> torch.Tensor:
    """The mean of `value` over the ranks (a rank's loss is its slice's: the global batch's is their mean)."""
    if not active():
        return value
    total = value.detach().clone()
    dist.all_reduce(total)
    return total / world_size()


def gathered(predict: Callable[[torch.Tensor], np.ndarray], images: torch.Tensor) -> np.ndarray:
    """`predict(images)`, each rank predicting its share of the rows, every rank receiving all of them."""
    if not active():
        return predict(images)
    bounds = np.linspace(0, len(images), world_size() + 1).astype(int)
    parts: list = [None] * world_size()
    dist.all_gather_object(parts, predict(images[bounds[rank()]:bounds[rank() + 1]]))
    return np.concatenate(parts)


def synchronised(model: nn.Module, device: torch.device) -> nn.Module:
    """BatchNorm layers replaced by ones that normalise over the global batch (before the optimizer is
    made: the parameters stay the same objects)."""
    if not launched():
        return model
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.__class__ = GlooSyncBatchNorm  # the same state, a forward that syncs on the CPU
    return model


def wrapped(model: nn.Module, device: torch.device) -> nn.Module:
    """The module the training step calls: DDP over `model` (which keeps the weights, unprefixed)."""
    if not active():
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def build_once(build: Callable[[], T], reuse: Callable[[], T], held: Callable[[Callable[[], T]], T]) -> T:
    """Rank 0 runs `held(build)` (which takes the fold's lock and builds or reuses it) and tells the others
    whether it built; they then build beside it (their part of the same training) or reuse its result."""
    if not active():
        return held(build)
    if is_main():
        told = []

        def build_and_tell() -> T:
            told.append(tell(True))
            result = build()
            dist.barrier()  # published: the other ranks may load it
            return result

        result = held(build_and_tell)
        if not told:
            tell(False)
        return result
    if tell(None):
        build()
        dist.barrier()
    return reuse()


def tell(value: bool | None) -> bool:
    """Rank 0's `value`, on every rank."""
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return bool(box[0])


class SummedOverRanks(torch.autograd.Function):
    """The sum of a tensor over the ranks; its gradient is the sum of the ranks' gradients, as every
    rank's loss depends on every rank's input through the sum."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.contiguous().clone()
        dist.all_reduce(total)
        return total


class GlooSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Synchronised BatchNorm for CPU ranks (torch's SyncBatchNorm, and DDP, refuse CPU tensors): in
    training, the per-channel sums, sums of squares and counts are added over the ranks with an
    autograd-aware all-reduce; in evaluation it is plain BatchNorm on the running statistics."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training or not active():
            return super().forward(input)
        dims = [0, *range(2, input.dim())]
        channels = input.size(1)
        local = torch.cat([input.sum(dims), (input * input).sum(dims),
                           input.new_tensor([input.numel() / channels])])
        total = SummedOverRanks.apply(local)
        count = total[-1]
        mean_ = total[:channels] / count
        var = (total[channels:2 * channels] / count - mean_ * mean_).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean_.detach(), momentum)
                self.running_var.lerp_(var.detach() * count / (count - 1), momentum)
        shape = [1, channels] + [1] * (input.dim() - 2)
        out = (input - mean_.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


# --- starting the ranks ----------------------------------------------------------------------------------


def launch(ranks: int, argv: list[str]) -> int:
    """`python -m pipelines argv` as `ranks` processes on this machine (torchrun --standalone), waited for;
    the exit status of the first that failed (each has printed its own one-line error)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    from pipelines.machine import cores

    # torchrun would set 1 and warn; pipelines/machine/cores.py sizes each rank's pools to its share in any case.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cores.machine_cores() // ranks)))
    try:
        run(get_args_parser().parse_args(["--standalone", f"--nproc-per-node={ranks}", "--module", "pipelines", *argv]))
    except ChildFailedError as exc:
        return next(iter(exc.failures.values())).exitcode or 1
    return 0


def check_devices(ranks: int, use_cuda: bool) -> str | None:
    """None when `ranks` ranks can run here, else why not; prints how they will run."""
    if use_cuda:
        if ranks > torch.cuda.device_count():
            return f"this machine has {torch.cuda.device_count()} CUDA device(s); set GPUS= to at most that"
        print(f"ddp: {ranks} ranks, one GPU each, NCCL")
    else:
        print(f"ddp: no GPU here: {ranks} ranks on the CPU with gloo, sharing its cores (a way to test the "
              "data-parallel path; no faster than one process)")
    return None
