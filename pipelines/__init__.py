"""The competition pipeline: stages that read validated config and input artifacts and write output artifacts.

The command layer sits here (`__main__`: the CLI; `checks`: everything checked before work starts;
`context`: what a run works from; `chain`: the stages chained for train, submit and report), above the
subpackages, which import downwards only (pyproject.toml's import-linter contracts check it):

    tools/       make bench, the Debian packages a fresh machine lacks
    report/      the HTML run report
    tuning/      Optuna studies: make tune, and the study a time-budget plan schedules
    execution/   how (run, fold) units train: this process or Dask workers, and the deadline guard
    planning/    probe the machine, plan a time budget, the plan of record
    after_run/   make predict, make export, make prune
    stages/      download -> prepare -> train -> predict -> tta -> ensemble -> submit
    recipe/      what a recipe names: augmentation, optimizers, losses, TTA views, the classifier
    machine/     the device, this process's share of the cores, DDP ranks, determinism
"""
