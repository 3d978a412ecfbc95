"""The Optuna study a time-budget plan schedules (planning/plan.py gives it only time left after every
chosen model's full epochs), run inside the time it was given.

The candidate's own parameters are enqueued as the study's first trial (so the best trial is never
worse than the hand-written recipe on the objective), and trials run while a whole one still fits the
time. The study persists in the tuning storage under a name fixed by the candidate, the objective and
the data (planning/study_space.py): a later run extends it. Then the best trial's parameters replace the
candidate's, and the plan's epochs are fitted again to the time then left (a wider model trains slower;
an overrun costs epochs, not the budget).
"""
from __future__ import annotations

import shutil
import time

import optuna

from competition import locks
from competition.paths import competition_root
from competition.recipe import Candidate, apply_params
from competition.redaction import redact
from competition.spec import stable_hash
from pipelines.planning.plan import ImageCounts, candidate_cost, decide, planned_runs
from pipelines.planning.probe import Speed, measure, probe_compiled
from pipelines.planning.records import Clock, PlanOfRecord, PlanRecord, read_plan
from pipelines.planning.study_space import OWN_RECIPE, candidate_named, fit_search_space, own_values
from pipelines.stages.inputs import TrainingInputs
from pipelines.tuning.studies import storage_url
from pipelines.tuning.tune import Objective, finished_trials, open_study, save_plots, worker_folder


def run_planned_study(inputs: TrainingInputs, record: PlanOfRecord, clock: Clock | None = None) -> tuple[PlanRecord, float]:
    """Run the plan's study (resuming one that was interrupted), then apply its best parameters: (the plan
    as it now stands, seconds this took). One process at a time: a second `make submit` of the same plan
    waits, then takes the first one's result."""
    started = time.monotonic()
    path, spec = record.path, inputs.spec
    with locks.hold(path.with_name(path.stem + "-study"), f"the Optuna study of {spec.name}'s plan"):
        if path.is_file():
            kept = read_plan(path, spec)
            if kept.study is not None and kept.study.done:
                print(f"study: '{kept.study.study}' was run by another process meanwhile; using its result", flush=True)
                return kept, time.monotonic() - started
        _study(inputs, record, clock or Clock())
    return record.plan, time.monotonic() - started


def _study(inputs: TrainingInputs, record: PlanOfRecord, clock: Clock) -> None:
    plan, spec, planned = record.plan, inputs.spec, record.plan.study
    candidate = candidate_named(spec, planned.run)
    precision = next(p.run.precision for p in plan.runs if p.run.name == planned.run)
    space, left_out = fit_search_space(spec, candidate)
    url = storage_url(spec, None)
    study = open_study(spec, planned.study, url)
    # Seeded by the study and its size: the same study proposes the same points, a later run new ones.
    study.sampler = optuna.samplers.TPESampler(seed=int(stable_hash([planned.study, len(study.trials)])[:8], 16))
    if not any(t.user_attrs.get(OWN_RECIPE) for t in study.trials):
        study.enqueue_trial(own_values(candidate, space), user_attrs={OWN_RECIPE: True})
    base = candidate.as_run(spec.tuning.epochs or candidate.epochs, precision)
    study_dir = worker_folder(competition_root(spec.name) / "tuning" / planned.study)
    objective = Objective(inputs, base, study_dir, space)
    deadline = clock.now() + planned.seconds - planned.seconds_spent
    print(f"study: '{planned.study}' in {redact(url)} on {candidate.name}: {finished_trials(study)} finished trials; "
          f"{(planned.seconds - planned.seconds_spent) / 60:.1f} min for more"
          + (f"; left out: {', '.join(left_out)}" if left_out else ""), flush=True)
    failures_in_a_row = 0
    while clock.now() + planned.trial_seconds <= deadline:  # start a trial only while a whole one fits
        began = clock.now()
        study.optimize(objective, n_trials=1, catch=(RuntimeError, ValueError), gc_after_trial=True)
        planned.seconds_spent = round(planned.seconds_spent + clock.now() - began, 1)
        planned.trials_run += 1
        record.save()  # an interrupted study resumes with the time it has left
        last = study.trials[-1]
        failures_in_a_row = failures_in_a_row + 1 if last.state == optuna.trial.TrialState.FAIL else 0
        if failures_in_a_row >= 3:
            print("study: 3 trials in a row failed; training with the best parameters found so far", flush=True)
            break
    shutil.rmtree(study_dir, ignore_errors=True)
    finish(inputs, record, study, candidate)


def finish(inputs: TrainingInputs, record: PlanOfRecord, study: optuna.Study, candidate: Candidate) -> None:
    """Record what the study found, put its best parameters into the plan, fit the epochs to the time left."""
    plan, planned = record.plan, record.plan.study
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    own = [t.value for t in complete if t.user_attrs.get(OWN_RECIPE)]
    planned.trials_in_study = finished_trials(study)
    planned.own_recipe_value = round(own[0], 5) if own else None
    if complete:
        best = study.best_trial  # in the study's direction
        planned.best_params, planned.best_value = dict(best.params), round(best.value, 5)
    planned.done = True
    if planned.best_params:
        print(f"study: best {planned.best_value:.4f} (own recipe {planned.own_recipe_value or float('nan'):.4f}) after "
              f"{planned.trials_in_study} trials: {planned.best_params}", flush=True)
        save_plots(study, competition_root(inputs.spec.name) / "tuning" / planned.study)
        tuned = apply_params(candidate, planned.best_params)
        if record.replay:  # a replay keeps its epochs and folds: only the parameters change
            plan.runs = [p.model_copy(update={"run": apply_params(p.run, planned.best_params)})
                         if p.run.name == candidate.name else p for p in plan.runs]
        else:
            fit_to_time_left(inputs, record, tuned)
    else:
        print("study: no trial completed; training with the candidate's own parameters", flush=True)
    record.save()


def fit_to_time_left(inputs: TrainingInputs, record: PlanOfRecord, tuned: Candidate) -> None:
    """Plan the training again for the time now left, with the tuned candidate's measured speed (eager:
    compiling it would need a new compile probe; the other runs keep their compiled speed, cached)."""
    plan, spec, data, runtime = record.plan, inputs.spec, inputs.data, inputs.runtime
    costs = []
    for planned in plan.runs:
        candidate = tuned if planned.run.name == tuned.name else candidate_named(spec, planned.run.name)
        precision, compile_seconds = planned.run.precision, None
        measured = plan.speeds[candidate.name][precision]
        predict_ips = measured["predict_images_per_second"]
        train_ips = measured["train_images_per_second"]
        if candidate is tuned:  # its width or batch may have changed: measure it as it will train
            speed = measure(spec, tuned.as_run(1, precision), data, runtime)
            train_ips, predict_ips = speed.train_images_per_second, speed.predict_images_per_second
        elif planned.run.compile:
            speed = probe_compiled(spec, planned.run, data, runtime)
            if not isinstance(speed, str):
                train_ips, compile_seconds = speed.train_images_per_second, speed.warmup_seconds
        costs.append(candidate_cost(spec, candidate, precision, planned.precision_reason, Speed(train_ips, predict_ips),
                                    ImageCounts(len(data.labels), len(data.test_images)), compile_seconds))
    left = plan.budget_seconds - (time.monotonic() - record.started) - plan.reserve_seconds
    decision = decide(spec, costs, left, plan.budget_seconds)
    plan.runs = planned_runs(spec, decision)
    plan.tta = spec.pool.tta[: decision.views]
    plan.notes += [f"after the study: {note}" for note in decision.notes]
    print(f"study: training planned again for the {left / 60:.1f} min left: "
          + ", ".join(f"{p.run.name} {p.run.epochs} epochs x {len(p.folds)} fold(s)" for p in plan.runs), flush=True)
