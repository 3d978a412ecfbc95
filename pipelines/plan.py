"""plan: what to train inside a time budget, decided from this machine's measured speeds.

`make submit COMP=x BUDGET=15m` plans after download and prepare (their time is known by then): it
probes every candidate of the spec's `pool:` (pipelines/probe.py), then decides which runs, on how many
folds, for how many epochs, in which precision, with which TTA views, keeping time for TTA, the
ensemble, the upload and the report. The plan is printed as a table and written as plan.json.

How the time is split (`choose`, a pure function of costs, so tests can feed it fake speeds):
1. Candidates are taken family-first: the first candidate of each architecture family in pool order,
   then the others. A model is added while every chosen model still gets at least the pool's
   `min_share` of its `epochs` (the point past which more barely helps) on one fold. The right share
   depends on the data, measured (README: "How the planner splits the time"): on Fashion-MNIST two or
   three families at 65% or 86% of their epochs lost to one model at all of its epochs (min_share 1.0);
   on the tiny-image stand-in two families at 90-100% gained a point over the best one (0.85).
2. Time left once every chosen model has all its `epochs` buys more folds (each fold model also
   averages into the test prediction); what buys no whole fold lengthens the schedules, up to
   MAX_STRETCH × `epochs`.
3. TTA views are added left to right while all their passes cost under TTA_SHARE of the budget
   (measured: hflip +0.18 points on Fashion-MNIST, flips and shifts +1.2 on the tiny-image stand-in
   for one of its models); the epochs are then fitted again.
Refitting on all rows is not planned: on a CPU it costs a whole extra run per model for no CV to check
it by. Optuna studies stay with `make tune` (a run may name a study's best parameters with `params:`).

The plan of record — what actually ran, after any change the deadline guard made — is saved under
<data>/<comp>/plans/<request>.json, keyed by what was asked (pool, budget, data, folds, machine): the
same command on the same machine reuses it without probing, so nothing is retrained.
`PLAN=path/to/plan.json` replays a plan's decisions on any machine.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from competition import atomic, locks
from competition.errors import UserError
from competition.paths import competition_root
from competition.recipe import Candidate, ModelRun, Profile
from competition.spec import CompetitionSpec, stable_hash
from pipelines.device import Runtime, machine_description, machine_key, offered_precisions

MAX_STRETCH = 1.5  # time that buys no further fold lengthens schedules, up to this many times `epochs`
TTA_SHARE = 0.05  # TTA views are added while all their passes cost under this share of the budget
FOLD_OVERHEAD_S = 2.0  # building the model, checkpoints, manifests: per fold, measured 1-2 s
EPOCH_OVERHEAD_S = 0.1  # per epoch: two checkpoints, the log line (dominant for tiny data sets such as digits)
PLAN_VERSION = 1


def reserve_seconds(budget: float) -> float:
    """Kept back for the ensemble, the upload and scoring, and the report (measured: 3-5 s on 2 cores;
    the rest is margin)."""
    return 10.0 + 0.01 * budget


# --- what plan.json holds -----------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Shortening(_Strict):
    """The deadline guard ended a fold's run early: from `from_epoch` on, the learning rate fell
    linearly to zero over the epochs up to `epochs` (so the schedule still completed)."""

    fold: int
    from_epoch: int = Field(ge=0)
    epochs: int = Field(ge=1)


class PlannedRun(_Strict):
    run: ModelRun  # epochs and precision as planned (or as the guard set them before the run started)
    family: str
    folds: list[int] = Field(min_length=1)
    seconds_per_epoch: float = Field(ge=0)
    seconds_per_fold: float = Field(ge=0)  # all epochs, the test prediction, overhead
    tta_seconds_per_fold: float = Field(ge=0)
    min_epochs: int = Field(default=1, ge=1)
    precision_reason: str = ""
    shortened: list[Shortening] = Field(default_factory=list)
    dropped_folds: list[int] = Field(default_factory=list)  # planned, then dropped by the guard

    @property
    def estimated_seconds(self) -> float:
        return len(self.folds) * (self.seconds_per_fold + self.tta_seconds_per_fold)


class PlanRecord(_Strict):
    version: Literal[1] = PLAN_VERSION
    competition: str
    request: str  # hash of what was asked: pool, budget, data, folds, machine
    budget_seconds: float
    device: str
    machine: str
    machine_key: str
    created: str
    runs: list[PlannedRun] = Field(min_length=1)
    tta: list[str] = Field(min_length=1)
    ensemble: str
    refit: bool = False
    reserve_seconds: float
    setup_seconds: float  # download, prepare, loading and probing, before the plan was made
    speeds: dict[str, dict[str, dict[str, float]]] = Field(default_factory=dict)  # run -> precision -> speeds
    precisions_left_out: dict[str, str] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)
    dropped_runs: list[str] = Field(default_factory=list)
    status: Literal["planned", "ran"] = "planned"
    actual: dict = Field(default_factory=dict)  # filled at the end: seconds per stage and per run

    def profile(self) -> Profile:
        """The plan as a recipe for the stages after training (TTA views, ensemble)."""
        return Profile(models=[p.run for p in self.runs], folds=sorted({f for p in self.runs for f in p.folds}),
                       tta=self.tta, ensemble=self.ensemble)

    def work(self) -> list[tuple[ModelRun, list[int]]]:
        return [(p.run, p.folds) for p in self.runs]

    def estimated_train_seconds(self) -> float:
        return sum(p.estimated_seconds for p in self.runs)

    def estimated_total_seconds(self) -> float:
        """The whole command as planned: setup, training with TTA, and the reserve."""
        return self.setup_seconds + self.estimated_train_seconds() + self.reserve_seconds

    def hash_input(self) -> dict:
        """What the predictions depend on (not the timings): part of the submission's config hash."""
        return {"runs": [{"run": p.run.model_dump(mode="json"), "folds": p.folds,
                          "shortened": [s.model_dump() for s in p.shortened]} for p in self.runs],
                "tta": self.tta, "ensemble": self.ensemble}


# --- costs and the choice -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CandidateCost:
    """One candidate at its chosen precision, as the planner sees it (seconds on this machine)."""

    candidate: Candidate
    precision: str
    precision_reason: str
    seconds_per_epoch: float  # training steps + the validation pass
    seconds_fixed_per_fold: float  # the test prediction + overhead
    seconds_per_view_per_fold: float  # one TTA view over the fold's held-out rows and the test set


@dataclass(frozen=True)
class Decision:
    runs: list[tuple[CandidateCost, int, int]]  # (cost, epochs, number of folds)
    views: int  # how many of the pool's TTA views, from the first
    notes: list[str]


def order_by_family(costs: list[CandidateCost]) -> list[CandidateCost]:
    """The first candidate of each family (in pool order), then the rest: diversity before repeats."""
    seen: set[str] = set()
    firsts, rest = [], []
    for cost in costs:
        (rest if cost.candidate.family in seen else firsts).append(cost)
        seen.add(cost.candidate.family)
    return firsts + rest


def tta_passes(view_passes: list[int], views: int) -> int:
    """Model passes per image of the TTA stage with the first `views` views (none with identity alone:
    the training stage's predictions are used as they are)."""
    return sum(view_passes[:views]) if views > 1 else 0


def _fit_epochs(chosen: list[CandidateCost], folds: int, seconds: float, passes: int, stretch_cap: float) -> float:
    """The largest share f of each model's `epochs` that fits `seconds` with `folds` folds each."""
    fixed = sum(folds * (c.seconds_fixed_per_fold + passes * c.seconds_per_view_per_fold) for c in chosen)
    per_share = sum(folds * c.candidate.epochs * c.seconds_per_epoch for c in chosen)
    if per_share <= 0:
        return stretch_cap
    return min(stretch_cap, max(0.0, (seconds - fixed) / per_share))


def _epochs(cost: CandidateCost, share: float) -> int:
    return max(1, min(math.floor(cost.candidate.epochs * share + 1e-9), math.ceil(cost.candidate.epochs * MAX_STRETCH)))


def _views(chosen: list[CandidateCost], view_passes: list[int], budget: float) -> int:
    """Views, left to right, while the TTA passes of the chosen models cost under TTA_SHARE of the budget."""
    per_pass = sum(c.seconds_per_view_per_fold for c in chosen)
    return max([1] + [n for n in range(2, len(view_passes) + 1)
                      if tta_passes(view_passes, n) * per_pass <= TTA_SHARE * budget])


def choose(costs: list[CandidateCost], seconds: float, n_splits: int, max_models: int, view_passes: list[int],
           budget: float, min_share: float = 0.85) -> Decision:
    """Which candidates, how many epochs and folds each, how many TTA views: see the module docstring.
    `view_passes` are the model passes of each of the pool's views (identity 1, hflip 1, shift 4)."""
    notes: list[str] = []
    ordered = order_by_family(costs)
    chosen: list[CandidateCost] = []
    for cost in ordered:
        if len(chosen) == max_models:
            break
        trial = chosen + [cost]
        share = _fit_epochs(trial, 1, seconds, 0, 1.0)
        if share >= min_share and all(_epochs(c, share) >= c.candidate.min_epochs for c in trial):
            chosen = trial
        elif chosen:
            notes.append(f"{cost.candidate.name} left out: with it, the models would get only {share:.0%} of their "
                         f"epochs (the planner wants {min_share:.0%})")
    if not chosen:  # no candidate gets min_share: the first that still gets its min_epochs, else the fastest
        fits = [c for c in costs if _epochs(c, _fit_epochs([c], 1, seconds, 0, 1.0)) >= c.candidate.min_epochs]
        pick = fits[0] if fits else min(costs, key=lambda c: c.seconds_per_epoch * c.candidate.min_epochs)
        views = _views([pick], view_passes, budget)
        epochs = _epochs(pick, _fit_epochs([pick], 1, seconds, tta_passes(view_passes, views), 1.0))
        notes.append(f"budget too small for {min_share:.0%} of any candidate's epochs: {pick.candidate.name} "
                     f"trains {epochs} of its {pick.candidate.epochs}")
        return Decision([(pick, epochs, 1)], views, notes)
    views = _views(chosen, view_passes, budget)
    passes = tta_passes(view_passes, views)
    folds = 1
    while folds < n_splits and _fit_epochs(chosen, folds + 1, seconds, passes, 1.0) >= 1.0:
        folds += 1
    share = _fit_epochs(chosen, folds, seconds, passes, MAX_STRETCH)  # time that buys no fold lengthens schedules
    if folds > 1:
        notes.append(f"{folds} folds: time was left after every model's full `epochs` on one fold")
    return Decision([(c, _epochs(c, share), folds) for c in chosen], views, notes)


# --- building, saving and replaying a plan --------------------------------------------------------------


def candidate_cost(spec: CompetitionSpec, candidate: Candidate, precision: str, reason: str, train_ips: float,
                   predict_ips: float, n_train: int, n_test: int) -> CandidateCost:
    val_rows = n_train / spec.folds.n_splits
    steps = int(n_train - val_rows) // candidate.batch_size
    views_pass = (val_rows + n_test) / predict_ips
    return CandidateCost(candidate, precision, reason,
                         seconds_per_epoch=steps * candidate.batch_size / train_ips + val_rows / predict_ips
                         + EPOCH_OVERHEAD_S,
                         seconds_fixed_per_fold=n_test / predict_ips + FOLD_OVERHEAD_S,
                         seconds_per_view_per_fold=views_pass)


def view_passes(view: str) -> int:
    from pipelines.predict import VIEWS

    return len(VIEWS[view])


def request_key(spec: CompetitionSpec, budget: float, runtime: Runtime) -> str:
    return stable_hash({"pool": spec.pool.model_dump(mode="json") if spec.pool else None, "budget": round(budget),
                        "data": spec.data_hash(), "folds": spec.folds.model_dump(), "flips": spec.flips.model_dump(),
                        "machine": machine_key(runtime), "version": PLAN_VERSION})


def plans_folder(spec: CompetitionSpec) -> Path:
    return competition_root(spec.name) / "plans"


def record_path(spec: CompetitionSpec, request: str) -> Path:
    return plans_folder(spec) / f"{request}.json"


def read_plan(path: Path, spec: CompetitionSpec) -> PlanRecord:
    """A plan.json, validated: one line naming the file and the field when it is not one."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise UserError(f"PLAN={path}: cannot read it ({exc.strerror or exc}); give the path of a plan.json") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"PLAN={path}: not JSON ({str(exc).splitlines()[0][:120]}); give a plan.json kpipe wrote") from None
    try:
        plan = PlanRecord.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"]) or "(top level)"
        raise UserError(f"PLAN={path}: field '{where}': {error['msg']}; give a plan.json kpipe wrote") from None
    if plan.competition != spec.name:
        raise UserError(f"PLAN={path}: plans competition '{plan.competition}', not '{spec.name}'; "
                        f"use COMP={plan.competition} or a plan of {spec.name}")
    for planned in plan.runs:
        too_far = [f for f in planned.folds if f >= spec.folds.n_splits]
        if too_far:
            raise UserError(f"PLAN={path}: run '{planned.run.name}' names fold {too_far[0]}, but "
                            f"{spec.name} has {spec.folds.n_splits} folds")
    return plan


def save_plan(plan: PlanRecord, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, plan.model_dump_json(indent=2) + "\n")


def make_plan(spec: CompetitionSpec, budget: float, runtime: Runtime, probe_speeds: Callable, check_precision: Callable,
              n_train: int, n_test: int, elapsed: Callable[[], float]) -> PlanRecord:
    """Decide with measured speeds. `probe_speeds(candidate) -> {precision: Speed}`;
    `check_precision(candidate, precision) -> {"allowed": bool, ...}` for reduced precisions;
    `elapsed()`: seconds of the budget used so far (read after probing, which it includes)."""
    pool = spec.pool
    _, left_out = offered_precisions(runtime)
    costs, speeds_table = [], {}
    for candidate in pool.candidates:
        speeds = probe_speeds(candidate)
        speeds_table[candidate.name] = {p: {"train_images_per_second": s.train_images_per_second,
                                            "predict_images_per_second": s.predict_images_per_second}
                                        for p, s in speeds.items()}
        precision, reason = pick_precision(candidate, speeds, check_precision)
        chosen = speeds[precision]
        costs.append(candidate_cost(spec, candidate, precision, reason, chosen.train_images_per_second,
                                    chosen.predict_images_per_second, n_train, n_test))
    reserve = reserve_seconds(budget)
    setup_seconds = elapsed()
    per_view = [view_passes(v) for v in pool.tta]
    decision = choose(costs, budget - setup_seconds - reserve, spec.folds.n_splits, pool.max_models, per_view, budget,
                      pool.min_share)
    passes = tta_passes(per_view, decision.views)
    runs = []
    for cost, epochs, folds in decision.runs:
        run = cost.candidate.as_run(epochs, cost.precision)
        runs.append(PlannedRun(
            run=run, family=cost.candidate.family, folds=list(range(folds)), min_epochs=cost.candidate.min_epochs,
            seconds_per_epoch=round(cost.seconds_per_epoch, 2),
            seconds_per_fold=round(epochs * cost.seconds_per_epoch + cost.seconds_fixed_per_fold, 1),
            tta_seconds_per_fold=round(cost.seconds_per_view_per_fold * passes, 1),
            precision_reason=cost.precision_reason))
    notes = list(decision.notes)
    notes.append("no refit on all rows: it would cost a whole extra run per model, with no held-out rows to check it")
    return PlanRecord(
        competition=spec.name, request=request_key(spec, budget, runtime), budget_seconds=budget,
        device=runtime.device.type, machine=machine_description(runtime), machine_key=machine_key(runtime),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"), runs=runs, tta=pool.tta[: decision.views],
        ensemble=pool.ensemble, reserve_seconds=round(reserve, 1), setup_seconds=round(setup_seconds, 1),
        speeds=speeds_table, precisions_left_out=left_out, notes=notes)


def obtain_plan(spec: CompetitionSpec, budget: float, plan_path: str | None, runtime: Runtime, data,
                elapsed: Callable[[], float], need_record: bool = False) -> tuple[PlanRecord, Path, bool]:
    """(plan, where its record is kept, whether it is a replay): PLAN= replays a file; otherwise the
    plan of record of the same request is reused (no probing); otherwise probe and plan."""
    if plan_path:
        plan = read_plan(Path(plan_path), spec)
        if plan.machine_key != machine_key(runtime):
            print(f"plan: replaying {plan_path}; its timings were measured on another machine ({plan.machine}), "
                  f"so its minutes are estimates here", flush=True)
        request = "replay-" + stable_hash(plan.hash_input())
        return plan.model_copy(update={"request": request}), record_path(spec, request), True
    request = request_key(spec, budget, runtime)
    path = record_path(spec, request)
    if not path.is_file() and need_record:
        raise UserError(f"no plan of record for {spec.name} with a {budget / 60:g}-minute budget on this machine; "
                        f"run `make submit COMP={spec.name}` first (or give the same BUDGET= as that run)")
    # One planner at a time: a second `make submit` waits here, then reuses the first one's plan.
    with locks.hold(path, f"the plan of {spec.name}"):
        if path.is_file():
            print(f"plan: reusing the plan of record {path} (same budget, data and machine: no probing)", flush=True)
            return read_plan(path, spec), path, False
        from pipelines.probe import check_reduced_precision, probe_run

        print(f"plan: probing {len(spec.pool.candidates)} candidates on {machine_description(runtime)}", flush=True)
        plan = make_plan(spec, budget, runtime, lambda c: probe_run(spec, c, data, runtime),
                         lambda c, p: check_reduced_precision(spec, c, data, runtime, p),
                         len(data.labels), len(data.test_images), elapsed)
        save_plan(plan, path)
    return plan, path, False


def pick_precision(candidate: Candidate, speeds: dict, check_precision) -> tuple[str, str]:
    """The fastest measured precision whose accuracy check passed (fp32 ones need none)."""
    ranked = sorted(speeds, key=lambda p: -speeds[p].train_images_per_second)
    baseline = min(speeds, key=lambda p: (0 if p == "fp32" else 1))
    for precision in ranked:
        ratio = speeds[precision].train_images_per_second / speeds[baseline].train_images_per_second
        if precision.startswith("fp32"):
            return precision, f"fastest allowed ({ratio:.2f}x {baseline} training)"
        check = check_precision(candidate, precision)
        if check["allowed"]:
            return precision, (f"{ratio:.2f}x {baseline} training; accuracy check {check['reduced_accuracy']:.4f} vs "
                               f"fp32 {check['fp32_accuracy']:.4f} after {check['steps']} steps")
    return baseline, "only fp32 measured"


def plan_table(plan: PlanRecord) -> str:
    rows = [("run", "family", "folds", "epochs", "precision", "est. min")]
    for p in plan.runs:
        rows.append((p.run.name, p.family, ",".join(map(str, p.folds)), str(p.run.epochs), p.run.precision,
                     f"{p.estimated_seconds / 60:.1f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    total = plan.estimated_total_seconds()
    lines.append(f"TTA {'+'.join(plan.tta)}, ensemble {plan.ensemble}; estimated {total / 60:.1f} of "
                 f"{plan.budget_seconds / 60:.1f} min (setup {plan.setup_seconds:.0f} s, reserve "
                 f"{plan.reserve_seconds:.0f} s for ensemble, upload and report)")
    lines += [f"note: {n}" for n in plan.notes]
    return "\n".join(lines)


class Clock:
    """Wall time; tests give the guard a fake one."""

    def now(self) -> float:
        return time.monotonic()
