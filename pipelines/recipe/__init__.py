"""What a recipe names, implemented: each option of a model run in the YAML has a registry here beside
its code — augmentation policies (`augment`, `auto_augment`), optimizers and schedules (`optim`), losses
(`losses`), TTA views (`kernel_inference`, the script a Kaggle kernel runs) — and `classifier`, the
network behind the competition's normalisation. The spec layer holds the names; these hold the code."""
