"""The competition pipeline: stages that read validated config and input artifacts and write output artifacts.

Stages, in the order a run meets them: download, prepare, train, predict, tta, ensemble, submit, report
(and tune, prune). Machinery they share: artifacts, device, device_data, classifier, augment, optim,
metrics, readers, registry. Commands: __main__ (checks, then context, then chain).
"""
