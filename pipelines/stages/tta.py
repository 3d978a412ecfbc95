"""TTA: average a fold model's probabilities over augmented views of each image.

Views are registered in predict.py (identity, hflip, vflip — only where the competition allows the flip
— shift, the mean over the four one-pixel translations, and hflip_shift, the same of the mirror image). With only the identity view this stage is
a pass-through of the train stage's predictions. Otherwise it writes, per model run and fold,
<data>/<comp>/tta/<run>-<key>/fold<k>/ with oof_probs.npy, oof_index.npy, test_probs.npy, manifest.json.
"""
from __future__ import annotations

import numpy as np
import torch

from competition.metrics import accuracy
from competition.paths import competition_root
from competition.spec import CompetitionSpec
from pipelines.machine.device import Runtime
from pipelines.stages.artifacts import atomic_output, build_once, output_key
from pipelines.stages.device_data import TrainingData
from pipelines.stages.predict import FoldOutput, file_digest, load_fold_model, predict_with_views


def tta_fold(spec: CompetitionSpec, run_name: str, trained: FoldOutput, data: TrainingData, views: list[str],
             runtime: Runtime) -> FoldOutput:
    if views == ["identity"]:
        return trained
    key = output_key({"views": views}, {"train": trained.digest})
    final = competition_root(spec.name) / "tta" / f"{run_name}-{key}" / trained.folder.name
    return build_once(final, f"TTA of {run_name} {trained.folder.name}",
                      lambda: _tta_fold(spec, run_name, trained, data, views, runtime, final), lambda: FoldOutput(final))


def _tta_fold(spec: CompetitionSpec, run_name: str, trained: FoldOutput, data: TrainingData, views: list[str],
              runtime: Runtime, final) -> FoldOutput:
    model = load_fold_model(trained.folder, spec, runtime)
    oof_index = np.load(trained.folder / "oof_index.npy")
    summary: dict = {}
    with atomic_output(final, "tta", {"views": views}, {"train": trained.digest}, extra=summary) as staging:
        oof_images = data.images[torch.from_numpy(oof_index).to(runtime.device)]
        oof_probs = predict_with_views(model, oof_images, views, f"tta {run_name} {trained.folder.name} oof", runtime.cores)
        np.save(staging / "oof_probs.npy", oof_probs)
        np.save(staging / "oof_index.npy", oof_index)
        np.save(staging / "test_probs.npy",
                predict_with_views(model, data.test_images, views, f"tta {run_name} {trained.folder.name} test", runtime.cores))
        summary["val_accuracy"] = accuracy(oof_probs, data.labels_host()[oof_index])
        summary["digest"] = file_digest(staging / "oof_probs.npy", staging / "test_probs.npy")
    return FoldOutput(final)


def tta_gain(trained: FoldOutput, with_tta: FoldOutput, labels: np.ndarray, score=accuracy) -> float:
    """`score` (larger is better) with TTA minus without, on the fold's held-out rows."""
    index, plain = trained.oof()
    _, augmented = with_tta.oof()
    return score(augmented, labels[index]) - score(plain, labels[index])


def tta_run(spec, run_name: str, trained_folds: list[FoldOutput], data: TrainingData, views: list[str],
            runtime: Runtime) -> list[FoldOutput]:
    outputs = [tta_fold(spec, run_name, trained, data, views, runtime) for trained in trained_folds]
    if views != ["identity"]:
        labels, metric = data.labels_host(), spec.metric.bind()
        gains = [tta_gain(t, o, labels, lambda p, y: metric.signed(metric.score(p, y)))
                 for t, o in zip(trained_folds, outputs)]
        print(f"tta: {run_name}: views {'+'.join(views)}: {metric.label} {'+' if np.mean(gains) >= 0 else '-'}"
              f"{abs(np.mean(gains)):.4f} {'better' if np.mean(gains) >= 0 else 'worse'} (mean over folds)")
    return outputs
