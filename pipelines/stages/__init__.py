"""The stages, in the order a run meets them: download -> prepare (readers, duplicates: arrays and
folds) -> train -> predict -> tta -> ensemble (calibrate, lineage) -> submit. Each reads the outputs of
the one before from disk and writes its own, keyed by what made them (`artifacts`); `inputs` bundles
what every (run, fold) trains from."""
