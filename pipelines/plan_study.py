"""plan_study: the Optuna study a time-budget plan schedules, run inside the time it was given.

The planner (pipelines/plan.py) gives a study only time left after every chosen model's full epochs.
Here the spec's `tuning:` search space is fitted to the candidate (model arguments its constructor does
not take are left out; so are colour-changing policies where colour defines the class), the candidate's
own parameters are enqueued as the study's first trial (so the best trial is never worse than the
hand-written recipe on the objective), and trials run while a whole one still fits the time. The study
persists in the tuning storage under a name fixed by the candidate, the objective and the data: a later
run extends it. Then the best trial's parameters replace the candidate's, and the plan's epochs are
fitted again to the time then left (a wider model trains slower; an overrun costs epochs, not the budget).
"""
from __future__ import annotations

import shutil
import time

import models
from competition import locks
from competition.errors import UserError
from competition.paths import competition_root
from competition.recipe import Candidate, ParamSpec, apply_params
from competition.spec import CompetitionSpec, stable_hash
from pipelines.checks import colour_problem
from pipelines.context import Context
from pipelines.plan import Clock, candidate_cost, decide, planned_runs, read_plan, save_plan

OWN_RECIPE = "own_recipe"  # user attribute of the enqueued trial that holds the candidate's own parameters


def fit_search_space(spec: CompetitionSpec, candidate: Candidate) -> tuple[dict[str, ParamSpec], list[str]]:
    """(the dimensions of `tuning.search_space` that fit the candidate, why the others were left out)."""
    takes = models.arguments(candidate.model)
    takes = takes if takes is not None else candidate.model_args  # a library model: only what the recipe names
    kept, left_out = {}, []
    for path, space in spec.tuning.search_space.items():
        head, _, key = path.partition(".")
        if head == "model_args" and key not in takes:
            left_out.append(f"{path} ({candidate.model} takes no '{key}')")
            continue
        if path == "augment.policy" and space.type == "categorical":
            keeps = [c for c in space.choices if not colour_problem(spec, str(c))]
            if not keeps:
                left_out.append(f"{path} (every choice changes colour, which defines the class here)")
                continue
            space = space.model_copy(update={"choices": keeps})
        kept[path] = space
    return kept, left_out


def _within(space: ParamSpec, value) -> bool:
    if space.type == "categorical":
        return value in space.choices
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not space.low <= value <= space.high:
        return False
    return space.step is None or abs((value - space.low) / space.step - round((value - space.low) / space.step)) < 1e-9


def own_values(candidate: Candidate, space: dict[str, ParamSpec]) -> dict:
    """The candidate's own value of each dimension that lies inside it (others are left to the sampler)."""
    data = candidate.model_dump(mode="json")
    defaults = models.arguments(candidate.model) or {}
    values = {}
    for path, dimension in space.items():
        head, _, key = path.partition(".")
        if head == "model_args":
            value = candidate.model_args.get(key, defaults.get(key))
        else:
            value = data[head][key] if key else data[head]
        if _within(dimension, value):
            values[path] = value
    return values


def study_name(spec: CompetitionSpec, candidate: Candidate) -> str:
    """Fixed by what a trial's score depends on: the recipe (not its length or precision), the objective
    (`tuning:` without the search space, which may grow; the metric and its direction), the data and the folds."""
    recipe = candidate.key_dump(exclude={"epochs", "precision", "compile", "family", "min_epochs"})
    objective = spec.tuning.model_dump(mode="json", exclude={"search_space"})
    key = stable_hash({"run": recipe, "tuning": objective, "metric": spec.metric.model_dump(), "data": spec.data_hash(),
                       "folds": spec.folds.model_dump(), **models.revision_key(candidate.model)})
    return f"plan-{spec.name}-{candidate.name}-{key[:8]}"


def candidate_named(spec: CompetitionSpec, name: str) -> Candidate:
    for candidate in spec.pool.candidates:
        if candidate.name == name:
            return candidate
    raise UserError(f"the plan names run '{name}', which {spec.name}'s pool no longer has; "
                    f"remove the plan of record under {competition_root(spec.name) / 'plans'} to plan again")


def run_planned_study(ctx: Context, clock: Clock | None = None) -> None:
    """Run the plan's study (resuming one that was interrupted), then apply its best parameters. One
    process at a time: a second `make submit` of the same plan waits, then takes the first one's result."""
    planned = ctx.plan.study if ctx.plan is not None else None
    if planned is None or planned.done:
        return
    with locks.hold(ctx.plan_path.with_name(ctx.plan_path.stem + "-study"), f"the Optuna study of {ctx.spec.name}'s plan"):
        if ctx.plan_path.is_file():
            record = read_plan(ctx.plan_path, ctx.spec)
            if record.study is not None and record.study.done:
                print(f"study: '{record.study.study}' was run by another process meanwhile; using its result", flush=True)
                ctx.plan, ctx.profile = record, record.profile()
                return
        _study(ctx, clock or Clock())


def _study(ctx: Context, clock: Clock) -> None:
    import optuna

    from competition.redaction import redact
    from pipelines.studies import storage_url
    from pipelines.tune import Objective, finished_trials, open_study, worker_folder

    plan, spec, planned = ctx.plan, ctx.spec, ctx.plan.study
    started = time.monotonic()
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
    objective = Objective(spec, base, ctx, study_dir, space)
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
        save_plan(plan, ctx.plan_path)  # an interrupted study resumes with the time it has left
        last = study.trials[-1]
        failures_in_a_row = failures_in_a_row + 1 if last.state == optuna.trial.TrialState.FAIL else 0
        if failures_in_a_row >= 3:
            print("study: 3 trials in a row failed; training with the best parameters found so far", flush=True)
            break
    shutil.rmtree(study_dir, ignore_errors=True)
    finish(ctx, study, candidate)
    ctx.stage_seconds["study"] = ctx.stage_seconds.get("study", 0.0) + time.monotonic() - started


def finish(ctx: Context, study, candidate: Candidate) -> None:
    """Record what the study found, put its best parameters into the plan, fit the epochs to the time left."""
    import optuna

    from pipelines.tune import finished_trials, save_plots

    plan, planned = ctx.plan, ctx.plan.study
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
        save_plots(study, competition_root(ctx.spec.name) / "tuning" / planned.study)
        tuned = apply_params(candidate, planned.best_params)
        if ctx.replay:  # a replay keeps its epochs and folds: only the parameters change
            plan.runs = [p.model_copy(update={"run": apply_params(p.run, planned.best_params)})
                         if p.run.name == candidate.name else p for p in plan.runs]
        else:
            fit_to_time_left(ctx, tuned)
    else:
        print("study: no trial completed; training with the candidate's own parameters", flush=True)
    ctx.profile = plan.profile()
    save_plan(plan, ctx.plan_path)


def fit_to_time_left(ctx: Context, tuned: Candidate) -> None:
    """Plan the training again for the time now left, with the tuned candidate's measured speed (eager:
    compiling it would need a new compile probe; the other runs keep their compiled speed, cached)."""
    from pipelines.probe import measure, probe_compiled

    plan, spec, data = ctx.plan, ctx.spec, ctx.data
    costs = []
    for planned in plan.runs:
        candidate = tuned if planned.run.name == tuned.name else candidate_named(spec, planned.run.name)
        precision, compile_seconds = planned.run.precision, None
        measured = plan.speeds[candidate.name][precision]
        predict_ips = measured["predict_images_per_second"]
        train_ips = measured["train_images_per_second"]
        if candidate is tuned:  # its width or batch may have changed: measure it as it will train
            speed = measure(spec, tuned.as_run(1, precision), data, ctx.runtime)
            train_ips, predict_ips = speed.train_images_per_second, speed.predict_images_per_second
        elif planned.run.compile:
            speed = probe_compiled(spec, planned.run, data, ctx.runtime)
            if not isinstance(speed, str):
                train_ips, compile_seconds = speed.train_images_per_second, speed.warmup_seconds
        costs.append(candidate_cost(spec, candidate, precision, planned.precision_reason, train_ips, predict_ips,
                                    len(data.labels), len(data.test_images), compile_seconds))
    left = plan.budget_seconds - (time.monotonic() - ctx.started) - plan.reserve_seconds
    decision = decide(spec, costs, left, plan.budget_seconds)
    plan.runs = planned_runs(spec, decision)
    plan.tta = spec.pool.tta[: decision.views]
    plan.notes += [f"after the study: {note}" for note in decision.notes]
    print(f"study: training planned again for the {left / 60:.1f} min left: "
          + ", ".join(f"{p.run.name} {p.run.epochs} epochs x {len(p.folds)} fold(s)" for p in plan.runs), flush=True)
