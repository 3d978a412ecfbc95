"""`python -m models list [--classes N] [--channels C] [--size S]`: every registered name and its parameter count."""
from __future__ import annotations

import argparse
import sys

import torch

import models


def count_parameters(name: str, classes: int, channels: int, size: int) -> int:
    # On the meta device no memory is allocated, so even 140M-parameter models count instantly.
    with torch.device("meta"):
        model = models.create(name, num_classes=classes, in_chans=channels, img_size=size)
    return sum(p.numel() for p in model.parameters())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    listing = sub.add_parser("list", help="registered models with parameter counts")
    listing.add_argument("--classes", type=int, default=10)
    listing.add_argument("--channels", type=int, default=1)
    listing.add_argument("--size", type=int, default=28, help="image height = width")
    args = parser.parse_args(argv)
    print(f"{'model':<36} {'parameters':>14}   ({args.classes} classes, {args.channels}x{args.size}x{args.size})")
    try:
        for name in models.list_models():
            print(f"{name:<36} {count_parameters(name, args.classes, args.channels, args.size):>14,}")
    except models.ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("any other timm:<name> or tv:<name> works too (timm.list_models(), torchvision.models.list_models())")
    return 0


if __name__ == "__main__":
    sys.exit(main())
