"""The competition pipeline: stages that read validated config and input artifacts and write output artifacts.

Stages, in the order a run meets them: download, prepare, train, predict, tta, ensemble, submit, report
(and tune, prune). Machinery they share: artifacts, device, device_data, classifier, augment, optim,
metrics, readers, registry. Commands: __main__ (checks, then context, then chain).
"""
import os as _os

# albumentations asks PyPI for a newer version on import: a network call from every run (and a warning
# offline). The pipeline pins what it uses; the question is never asked.
_os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
