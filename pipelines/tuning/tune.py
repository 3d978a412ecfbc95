"""tune: an Optuna study over a model run's hyperparameters, with pruning, persistent and shared storage.

The objective trains the run (with the trial's parameters applied) on `tuning.folds`, optionally on a
subsample of the rows, reports the validation score (the competition's metric) every epoch, and returns
the mean over folds; the study maximises or minimises as the metric says.
Storage: by default an SQLite file under <data>/<comp>/tuning/ (no server); any SQLAlchemy URL
(e.g. postgresql://...) for workers on several machines. Trials send heartbeats; a worker that dies
mid-trial has its trial marked failed by the next worker and retried (RetryHeartbeatStaleTrialCallback),
resuming from the dead trial's last epoch checkpoints.

`make tune` itself (which study, how many trials, on which workers) is make_tune.py.
"""
from __future__ import annotations

import gc
import os
import shutil
from pathlib import Path

import numpy as np
import optuna
import torch

from competition import atomic
from competition.errors import UserError
from competition.paths import competition_root
from competition.recipe import ModelRun, ParamSpec, PrunerConfig, apply_params
from competition.redaction import redact
from competition.spec import CompetitionSpec
from pipelines.stages.calibrate import selection_score
from pipelines.stages.inputs import TrainingInputs
from pipelines.stages.train import FoldJob, FoldOptions, train_fold
from pipelines.tuning.studies import open_storage


def make_pruner(config: PrunerConfig) -> optuna.pruners.BasePruner:
    factories = {
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=config.n_startup_trials,
                                                      n_warmup_steps=config.n_warmup_steps),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1, reduction_factor=config.reduction_factor),
        "none": lambda: optuna.pruners.NopPruner(),
    }
    return factories[config.name]()


def suggest(trial: optuna.Trial, path: str, spec: ParamSpec):
    if spec.type == "categorical":
        return trial.suggest_categorical(path, spec.choices)
    if spec.type == "int":
        return trial.suggest_int(path, int(spec.low), int(spec.high), step=int(spec.step or 1), log=spec.log)
    return trial.suggest_float(path, spec.low, spec.high, step=spec.step, log=spec.log)


class Objective:
    """Mean validation score (the competition's metric; label sets at thresholds fitted on the held-out rows, as
    epochs are chosen) over the tuning folds of the run with the trial's parameters
    (`search_space`: the spec's `tuning.search_space`, or a part of it that fits the run)."""

    def __init__(self, inputs: TrainingInputs, base_run: ModelRun, study_dir: Path,
                 search_space: dict[str, ParamSpec] | None = None):
        self.inputs, self.spec, self.base_run, self.study_dir = inputs, inputs.spec, base_run, study_dir
        self.search_space = search_space if search_space is not None else inputs.spec.tuning.search_space

    def __call__(self, trial: optuna.Trial) -> float:
        tuning = self.spec.tuning
        trial.set_user_attr("worker", f"{os.uname().nodename}:{os.getpid()}")  # which worker ran it
        params = {path: suggest(trial, path, space) for path, space in self.search_space.items()}
        run = apply_params(self.base_run, params)
        if tuning.epochs:
            run = run.model_copy(update={"epochs": tuning.epochs})
        trial_dir = self.study_dir / f"trial-{trial.number}"
        trial.set_user_attr("folder", str(trial_dir))
        adopt_dead_trial(trial, trial_dir)
        scores = []
        try:
            for position, fold in enumerate(tuning.folds):
                def report(epoch: int, val_score: float, position=position) -> None:
                    step = position * run.epochs + epoch
                    trial.report(val_score, step)
                    if trial.should_prune():
                        # In the study as well as in the state: where the pruner stopped it.
                        trial.set_user_attr("pruned_at", {"fold": fold, "epoch": epoch, "step": step})
                        raise optuna.TrialPruned(f"pruned at epoch {epoch} of fold {fold} "
                                                 f"(val {self.spec.metric} {val_score:.4f})")

                output = train_fold(FoldJob(self.inputs, run, fold),
                                    FoldOptions(out_root=trial_dir, subsample=tuning.subsample, on_epoch=report))
                index, probs = output.oof()
                # As the epochs were chosen: label sets scored at thresholds fitted on the held-out rows.
                scores.append(selection_score(self.spec.metric.bind(), probs, self.inputs.data.labels_host()[index]))
        finally:
            # A finished or pruned trial keeps nothing but its numbers in the study: free disk and memory now.
            shutil.rmtree(trial_dir, ignore_errors=True)
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        return float(np.mean(scores))


def worker_folder(study_root: Path) -> Path:
    """This process's trial folders: named by machine and process, so that a retry on this machine can
    tell a dead worker's folder from a live one's (workers of other machines may share the disk)."""
    return study_root / f"worker-{os.uname().nodename}-{os.getpid()}"


def adopt_dead_trial(trial: optuna.Trial, trial_dir: Path) -> None:
    """A retry of a trial whose worker died (Optuna's RetryHeartbeatStaleTrialCallback gives it the same
    parameters) takes over the dead trial's folder, so that each fold resumes from its last epoch
    checkpoint instead of starting over."""
    trials = trial.study.get_trials(deepcopy=False)
    frozen = next(t for t in trials if t.number == trial.number)
    history = optuna.storages.RetryFailedTrialCallback.retry_history(frozen)  # earlier attempts, the latest last
    if not history:
        return
    failed = history[-1]
    dead = next((t for t in trials if t.number == failed), None)
    folder = Path(dead.user_attrs.get("folder", "")) if dead is not None else None
    if folder is None or not folder.is_dir() or not folder.name.startswith("trial-"):
        return  # its worker was on another machine, or nothing was saved yet: start over
    trial_dir.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(folder, trial_dir)
    trial.set_user_attr("resumed_from_trial", failed)
    print(f"tune: trial {trial.number} resumes trial {failed}, whose worker died, from its last epoch checkpoints")


def remove_dead_workers_folders(study: optuna.Study, study_root: Path) -> None:
    """Folders of this machine's workers that died with trials in them, but for those a waiting retry
    will take over."""
    waiting = {t.system_attrs.get("failed_trial") for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))}
    wanted = {Path(t.user_attrs["folder"]).parent for t in study.get_trials(deepcopy=False)
              if t.number in waiting and "folder" in t.user_attrs}
    for folder in study_root.glob(f"worker-{os.uname().nodename}-*"):
        pid = folder.name.rsplit("-", 1)[1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists() and folder not in wanted:
            shutil.rmtree(folder, ignore_errors=True)


def open_study(spec: CompetitionSpec, name: str, url: str, seed: int | None = None) -> optuna.Study:
    """The study `name` in `url`, created when new: in the metric's direction, with the spec's pruner and TPE."""
    return optuna.create_study(study_name=name, storage=open_storage(url), direction=direction(spec),
                               pruner=make_pruner(spec.tuning.pruner), load_if_exists=True,
                               sampler=optuna.samplers.TPESampler(seed=seed))


def direction(spec: CompetitionSpec) -> str:
    return "maximize" if spec.metric.bind().greater_is_better else "minimize"


def finished_trials(study: optuna.Study) -> int:
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=states))


def tune(inputs: TrainingInputs, run: ModelRun, total: int, study_name: str, url: str) -> optuna.Study:
    """Run trials until the study holds `total` finished (complete or pruned) trials."""
    spec = inputs.spec
    study = open_study(spec, study_name, url)
    study_dir = worker_folder(competition_root(spec.name) / "tuning" / study_name)
    print(f"tune: study '{study_name}' in {redact(url)}: {finished_trials(study)} finished trials, running until {total}")
    objective = Objective(inputs, run, study_dir)
    # Count before each trial (not after, as MaxTrialsCallback does): workers sharing the study stop at
    # `total` instead of each finishing one more trial. Running trials count; failed ones do not.
    failures_in_a_row = 0
    while True:
        optuna.storages.fail_stale_trials(study)  # a dead worker's trial becomes FAIL, and is retried
        active = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,
                                                              optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.RUNNING)))
        if active >= total:
            break
        # A trial that crashes (e.g. a diverging learning rate) fails alone; the study goes on.
        study.optimize(objective, n_trials=1, catch=(RuntimeError, ValueError), gc_after_trial=True)
        last = study.get_trials(deepcopy=False)[-1]
        failures_in_a_row = failures_in_a_row + 1 if last.state == optuna.trial.TrialState.FAIL else 0
        if failures_in_a_row >= 3:
            raise UserError(f"tune: 3 trials in a row failed (last: {last.system_attrs.get('fail_reason', 'see the log above')})")
    shutil.rmtree(study_dir, ignore_errors=True)
    remove_dead_workers_folders(study, study_dir.parent)
    return study


def report_study(study: optuna.Study, out_dir: Path, url: str, top: int = 10) -> list[Path]:
    """Print the best trials as a table; save Optuna's optimisation-history and importance plots as PNG."""
    trials = study.get_trials(deepcopy=False)
    counts = {state.name: sum(t.state == state for t in trials) for state in optuna.trial.TrialState}
    print(f"\nstudy '{study.study_name}': " + ", ".join(f"{n} {name.lower()}" for name, n in counts.items() if n))
    sign = -1 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1  # best first
    done = sorted((t for t in trials if t.state == optuna.trial.TrialState.COMPLETE), key=lambda t: sign * t.value)[:top]
    if done:
        names = list(done[0].params)
        header = ["trial", "val score", "seconds"] + names
        rows = [[str(t.number), f"{t.value:.4f}", f"{t.duration.total_seconds():.0f}" if t.duration else "-"]
                + [f"{t.params.get(n):.4g}" if isinstance(t.params.get(n), float) else str(t.params.get(n)) for n in names]
                for t in done]
        widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
        for row in [header] + rows:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)))
    for t in trials:
        if t.state == optuna.trial.TrialState.PRUNED and "pruned_at" in t.user_attrs:
            at = t.user_attrs["pruned_at"]
            value = t.intermediate_values.get(at["step"])
            print(f"trial {t.number} pruned at fold {at['fold']} epoch {at['epoch']}"
                  + (f" (val score {value:.4f})" if value is not None else ""))
    saved = save_plots(study, out_dir)
    print(f"tune: browse the study live with: optuna-dashboard '{redact(url)}' (with your password)")
    return saved


def save_plots(study: optuna.Study, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as optuna_plots

    out_dir.mkdir(parents=True, exist_ok=True)
    saved = []
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    plots = {"optimization_history.png": optuna_plots.plot_optimization_history}
    if len(complete) >= 2:  # importances need at least two finished trials to compare
        plots["param_importances.png"] = optuna_plots.plot_param_importances
    for file_name, plot in plots.items():
        try:
            axes = plot(study)
        except (ValueError, RuntimeError) as exc:  # e.g. every trial had the same parameters
            print(f"tune: no {file_name} ({exc})")
            continue
        figure = (axes.flat[0] if hasattr(axes, "flat") else axes).get_figure()
        figure.set_size_inches(8, 5)
        figure.tight_layout()
        with atomic.atomic_file(out_dir / file_name, "wb") as fh:
            figure.savefig(fh, dpi=100, format="png")
        plt.close(figure)
        saved.append(out_dir / file_name)
    if saved:
        print(f"tune: plots in {out_dir} ({', '.join(p.name for p in saved)})")
    return saved
