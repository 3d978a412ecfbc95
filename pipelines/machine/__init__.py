"""The machine a command computes on: the device and its precisions (`device`), this process's share of
the cores (`cores`), data-parallel ranks (`ddp`) and repeatable kernels (`determinism`)."""
