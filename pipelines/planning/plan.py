"""plan: what to train inside a time budget, decided from this machine's measured speeds.

`make submit COMP=x BUDGET=15m` plans after download and prepare (their time is known by then): it
probes every candidate of the spec's `pool:` (pipelines/planning/probe.py), then decides which runs, on how many
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
   MAX_STRETCH × `epochs` (the pool's `max_stretch`, where it sets one).
3. TTA views are added left to right while all their passes cost under TTA_SHARE of the budget
   (measured: hflip +0.18 points on Fashion-MNIST, flips and shifts +1.2 on the tiny-image stand-in
   for one of its models); the epochs are then fitted again.
5. torch.compile is probed for a chosen run only when its planned training steps could repay a compile
   (COMPILE_GUESS_S at a COMPILE_MIN_GAIN speed-up), and used when the measured speed-up is at least
   COMPILE_MIN_GAIN and saves more than the compile costs; then the time is split again.
4. An Optuna study on the first chosen candidate (the spec's `tuning:` search space, fitted to it) is
   planned only from the time left after every chosen model's full `epochs` on one fold: at most the
   pool's `study_share` of the time, and only when that buys `min_trials` unpruned trials. After the
   study (pipelines/tuning/planned.py) the best parameters replace the candidate's and the epochs are fitted
   again to the time then left. So a small budget never trades epochs for tuning; a large one tunes
   before it buys more folds.
Refitting on all rows is not planned: on a CPU it costs a whole extra run per model for no CV to check
it by.

The plan of record — what actually ran, after any change the deadline guard made — is saved under
<data>/<comp>/plans/<request>.json, keyed by what was asked (pool, budget, data, folds, machine): the
same command on the same machine reuses it without probing, so nothing is retrained.
`PLAN=path/to/plan.json` replays a plan's decisions on any machine.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import models
from competition import locks
from competition.errors import UserError
from competition.paths import competition_root
from competition.recipe import Candidate
from competition.spec import CompetitionSpec, stable_hash
from pipelines.machine.device import Runtime, compile_offered, machine_description, machine_key, offered_precisions
from pipelines.planning.probe import Speed
from pipelines.planning.records import (PLAN_VERSION, PlannedRun, PlannedStudy, PlanRecord, read_plan, resolve_teachers,
                                        save_plan)

MAX_STRETCH = 1.5  # time that buys no further fold lengthens schedules, up to this many times `epochs`
TTA_SHARE = 0.05  # TTA views are added while all their passes cost under this share of the budget
FOLD_OVERHEAD_S = 2.0  # building the model, checkpoints, manifests: per fold, measured 1-2 s
EPOCH_OVERHEAD_S = 0.1  # per epoch: two checkpoints, the log line (dominant for tiny data sets such as digits)
COMPILE_MIN_GAIN = 1.10  # measured compile speed-ups below this are within the probe's noise on 2 cores
COMPILE_GUESS_S = 30.0  # a first compile before anything is cached: 28-37 s measured on a 2-core CPU
# The decision logic's revision: plans of record made by an older planner are not reused (same request).
PLANNER_REVISION = 2


# A code competition's entry: the package published, the inference kernel queued and run on the hidden
# test set, its output fetched (measured on the local host: 15 s for digits, 60 s for Fashion-MNIST's
# 10,000 images).
CODE_COMPETITION_KERNEL_S = 60.0


def reserve_seconds(budget: float, kernels_only: bool = False) -> float:
    """Kept back for the ensemble, the upload and scoring, and the report (measured: 3-5 s on 2 cores;
    the rest is margin), and a code competition's inference kernel."""
    return 10.0 + 0.01 * budget + (CODE_COMPETITION_KERNEL_S if kernels_only else 0.0)


# --- costs and the choice -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CandidateCost:
    """One candidate at its chosen precision, as the planner sees it (seconds on this machine)."""

    candidate: Candidate
    precision: str
    precision_reason: str
    seconds_per_epoch: float  # training steps + the validation pass
    seconds_fixed_per_fold: float  # the test prediction + overhead (+ compiling)
    seconds_per_view_per_fold: float  # one TTA view over the fold's held-out rows and the test set
    seconds_training_per_epoch: float = 0.0  # the training steps alone (what torch.compile can speed up)
    predict_images_per_second: float = 0.0
    compiled: bool = False


@dataclass(frozen=True)
class StudyOffer:
    """What a study would cost: seconds of one unpruned trial per candidate name, and the pool's limits."""

    trial_seconds: dict[str, float]
    share: float
    min_trials: int


@dataclass(frozen=True)
class Decision:
    runs: list[tuple[CandidateCost, int, int]]  # (cost, epochs, number of folds)
    views: int  # how many of the pool's TTA views, from the first
    notes: list[str]
    study_seconds: float = 0.0  # time for an Optuna study on the first run, before training


def family_order(candidates: list[Candidate]) -> list[Candidate]:
    """The first candidate of each family (in pool order), then the rest: diversity before repeats."""
    seen: set[str] = set()
    firsts, rest = [], []
    for candidate in candidates:
        (rest if candidate.family in seen else firsts).append(candidate)
        seen.add(candidate.family)
    return firsts + rest


def order_by_family(costs: list[CandidateCost]) -> list[CandidateCost]:
    """`family_order` of the costs' candidates."""
    by_candidate = {id(c.candidate): c for c in costs}
    return [by_candidate[id(c)] for c in family_order([c.candidate for c in costs])]


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


def study_time(chosen: list[CandidateCost], seconds: float, passes: int, offer: StudyOffer | None) -> tuple[float, str]:
    """(seconds for a study on the first chosen run, why): only time left after every chosen model's
    full `epochs` on one fold, at most `offer.share` of `seconds`, and none below `min_trials` trials."""
    if offer is None or chosen[0].candidate.name not in offer.trial_seconds:
        return 0.0, ""
    name, trial = chosen[0].candidate.name, offer.trial_seconds[chosen[0].candidate.name]
    spare = seconds - sum(c.candidate.epochs * c.seconds_per_epoch + c.seconds_fixed_per_fold
                          + passes * c.seconds_per_view_per_fold for c in chosen)
    allowance = max(0.0, min(spare, offer.share * seconds))
    if trial <= 0 or allowance < offer.min_trials * trial:
        return 0.0, (f"no Optuna study: {offer.min_trials} trials of {name} would take {offer.min_trials * trial / 60:.1f} "
                     f"min; {max(0.0, spare) / 60:.1f} min are left after every model's full epochs")
    return allowance, (f"Optuna study on {name} for {allowance / 60:.1f} min (about {allowance / trial:.0f} unpruned "
                       f"trials) before training: time left after every model's full epochs")


def choose(costs: list[CandidateCost], seconds: float, n_splits: int, max_models: int, view_passes: list[int],
           budget: float, min_share: float = 0.85, offer: StudyOffer | None = None,
           max_stretch: float = MAX_STRETCH) -> Decision:
    """Which candidates, how many epochs and folds each, how many TTA views, whether to study first: see
    the module docstring. `view_passes` are the model passes of each of the pool's views (identity 1,
    hflip 1, shift 4); `offer`: what a study would cost (None: no study). A pure function of numbers,
    tested on its own: its eight inputs are the whole of what the choice depends on."""
    notes: list[str] = []
    ordered = order_by_family(costs)
    chosen: list[CandidateCost] = []
    # The most preferred candidate short of time is trained shortened rather than replaced by a weaker
    # one that fits (measured on Fashion-MNIST: deeper_cnn alone at 18 epochs instead of fastresnet at 13).
    first_share = _fit_epochs(ordered[:1], 1, seconds, 0, 1.0)
    for cost in ordered if first_share >= min_share else []:
        if len(chosen) == max_models:
            break
        teacher = cost.candidate.pseudo_labels.teacher if cost.candidate.pseudo_labels else None
        if teacher is not None and teacher not in {c.candidate.name for c in chosen}:
            notes.append(f"{cost.candidate.name} left out: its pseudo-label teacher {teacher} is not in the plan")
            continue
        trial = chosen + [cost]
        share = _fit_epochs(trial, 1, seconds, 0, 1.0)
        if share >= min_share and all(_epochs(c, share) >= c.candidate.min_epochs for c in trial):
            chosen = trial
        elif chosen:
            notes.append(f"{cost.candidate.name} left out: with it, the models would get only {share:.0%} of their "
                         f"epochs (the planner wants {min_share:.0%})")
    if not chosen:  # the preferred candidate is short of time: it alone (if it gets min_epochs), else the
        # next that does, else the fastest
        alone = [c for c in ordered if c.candidate.pseudo_labels is None]  # a student needs its teacher beside it
        fits = [c for c in alone if _epochs(c, _fit_epochs([c], 1, seconds, 0, 1.0)) >= c.candidate.min_epochs]
        pick = fits[0] if fits else min(alone, key=lambda c: c.seconds_per_epoch * c.candidate.min_epochs)
        views = _views([pick], view_passes, budget)
        epochs = _epochs(pick, _fit_epochs([pick], 1, seconds, tta_passes(view_passes, views), 1.0))
        notes.append(f"budget too small for {min_share:.0%} of {ordered[0].candidate.name}'s epochs: "
                     f"{pick.candidate.name} trains alone, {epochs} of its {pick.candidate.epochs}")
        return Decision([(pick, epochs, 1)], views, notes)
    views = _views(chosen, view_passes, budget)
    passes = tta_passes(view_passes, views)
    studying, why = study_time(chosen, seconds, passes, offer)
    notes += [why] if why else []
    seconds -= studying
    folds = 1
    while folds < n_splits and _fit_epochs(chosen, folds + 1, seconds, passes, 1.0) >= 1.0:
        folds += 1
    share = _fit_epochs(chosen, folds, seconds, passes, max_stretch)  # time that buys no fold lengthens schedules
    if folds > 1:
        notes.append(f"{folds} folds: time was left after every model's full `epochs` on one fold")
    return Decision([(c, _epochs(c, share), folds) for c in chosen], views, notes, studying)


# --- building, saving and replaying a plan --------------------------------------------------------------


@dataclass(frozen=True)
class ImageCounts:
    """How many images a plan is made for: training rows (all folds together) and test images."""

    train: int
    test: int


def candidate_cost(spec: CompetitionSpec, candidate: Candidate, precision: str, reason: str, speed: Speed,
                   counts: ImageCounts, compile_seconds: float | None = None) -> CandidateCost:
    """`compile_seconds` given: trained through torch.compile, which costs that much per fold (an upper
    bound: a later fold in the same process reuses the compiled kernels)."""
    n_train, n_test = counts.train, counts.test
    train_ips, predict_ips = speed.train_images_per_second, speed.predict_images_per_second
    val_rows = n_train / spec.folds.n_splits
    # A pseudo-labelling student trains on up to `max_share` more rows, from the test set: planned at the most.
    pseudo = min(candidate.pseudo_labels.max_share * (n_train - val_rows), n_test) if candidate.pseudo_labels else 0
    steps = int(n_train - val_rows + pseudo) // candidate.batch_size
    training = steps * candidate.batch_size / train_ips
    return CandidateCost(candidate, precision, reason,
                         seconds_per_epoch=training + val_rows / predict_ips + EPOCH_OVERHEAD_S,
                         seconds_fixed_per_fold=n_test / predict_ips + FOLD_OVERHEAD_S + (compile_seconds or 0.0),
                         seconds_per_view_per_fold=(val_rows + n_test) / predict_ips,
                         seconds_training_per_epoch=training, predict_images_per_second=predict_ips,
                         compiled=compile_seconds is not None)


def consider_compile(spec: CompetitionSpec, decision: Decision, probe_compiled: Callable,
                     counts: ImageCounts) -> tuple[dict[str, CandidateCost], list[str]]:
    """({candidate name: its compiled cost} where compiling pays, notes). `probe_compiled(candidate,
    precision)` returns a probe Speed, or a string saying why it cannot compile."""
    compiled, notes = {}, []
    for cost, epochs, folds in decision.runs:
        name, steps = cost.candidate.name, epochs * folds * cost.seconds_training_per_epoch
        if steps * (1 - 1 / COMPILE_MIN_GAIN) <= COMPILE_GUESS_S:
            notes.append(f"torch.compile not probed for {name}: {steps / 60:.1f} min of training steps would not "
                         f"repay a compile (~{COMPILE_GUESS_S:.0f} s) at a {COMPILE_MIN_GAIN:.2f}x speed-up")
            continue
        speed = probe_compiled(cost.candidate, cost.precision)
        if isinstance(speed, str):
            notes.append(f"torch.compile not used for {name}: {speed}")
            continue
        option = candidate_cost(spec, cost.candidate, cost.precision, "",
                                Speed(speed.train_images_per_second, cost.predict_images_per_second), counts,
                                compile_seconds=speed.warmup_seconds)
        gain = cost.seconds_training_per_epoch / option.seconds_training_per_epoch
        saved = epochs * folds * (cost.seconds_per_epoch - option.seconds_per_epoch) - folds * speed.warmup_seconds
        verdict = (f"{gain:.2f}x training steps, {speed.warmup_seconds:.0f} s to compile: saves about {saved / 60:.1f} "
                   f"min over {epochs} epochs x {folds} fold(s)")
        if gain >= COMPILE_MIN_GAIN and saved > 0:
            compiled[name] = replace(option, precision_reason=f"{cost.precision_reason}; torch.compile: {verdict}")
            notes.append(f"torch.compile for {name}: {verdict}")
        else:
            notes.append(f"torch.compile not used for {name}: {verdict} (it needs at least {COMPILE_MIN_GAIN:.2f}x "
                         f"and a saving)")
    return compiled, notes


def trial_seconds(spec: CompetitionSpec, cost: CandidateCost, counts: ImageCounts) -> float:
    """One unpruned trial of the spec's `tuning:` on this candidate: its epochs on a subsample of each
    tuning fold's training rows, validation every epoch, the test prediction and the overhead."""
    tuning, candidate = spec.tuning, cost.candidate
    val_rows = counts.train / spec.folds.n_splits
    validation = val_rows / (val_rows + counts.test) * cost.seconds_per_view_per_fold
    training = cost.seconds_per_epoch - validation - EPOCH_OVERHEAD_S
    epoch = tuning.subsample * training + validation + EPOCH_OVERHEAD_S
    return len(tuning.folds) * ((tuning.epochs or candidate.epochs) * epoch + cost.seconds_fixed_per_fold)


def view_passes(view: str) -> int:
    from pipelines.stages.predict import VIEWS

    return len(VIEWS[view])


def request_key(spec: CompetitionSpec, budget: float, runtime: Runtime) -> str:
    """The plan of record's name: what the plan depends on. Candidates as their outputs are keyed (unset
    newer options left out, a changed net's revision in), so adding an option does not plan again."""
    pool = None
    if spec.pool:
        pool = {**spec.pool.model_dump(mode="json", exclude={"max_stretch"} if spec.pool.max_stretch is None else set()),
                "candidates": [{**c.key_dump(), **models.revision_key(c.model)} for c in spec.pool.candidates]}
    return stable_hash({"pool": pool, "budget": round(budget),
                        "data": spec.data_hash(), "folds": spec.folds.model_dump(), "flips": spec.flips.model_dump(),
                        "machine": machine_key(runtime), "version": PLAN_VERSION, "planner": PLANNER_REVISION})


def plans_folder(spec: CompetitionSpec) -> Path:
    return competition_root(spec.name) / "plans"


def record_path(spec: CompetitionSpec, request: str) -> Path:
    return plans_folder(spec) / f"{request}.json"


ZERO_WEIGHT = 0.02  # an ensemble weight below this added nothing measurable to the blend


def expected_zero_weight(past: list[PlanRecord]) -> dict[str, str]:
    """{candidate name: why it is not worth training} from the outcomes of earlier plans of record
    (newest first): a run that trained at its full epochs beside others and ended in the ensemble with
    weight ~0 added nothing, and would add nothing again on this data and machine."""
    skip: dict[str, str] = {}
    seen: set[str] = set()
    for plan in past:
        weights = plan.actual.get("weights") or {}
        for planned in plan.runs:
            name = planned.run.name
            if name in seen or name not in weights or len(weights) < 2:
                continue
            seen.add(name)
            if weights[name] < ZERO_WEIGHT:
                skip[name] = (f"{name} not probed or trained: it ended with ensemble weight {weights[name]:.2f} "
                              f"after {planned.run.epochs} epochs in the plan of record {plan.request} "
                              f"({plan.budget_seconds / 60:g}-minute budget, {plan.created[:10]})")
    return skip


def past_plans(spec: CompetitionSpec, runtime: Runtime) -> list[PlanRecord]:
    """This competition's plans of record that ran on this machine, newest first (unreadable ones skipped)."""
    plans = []
    for path in plans_folder(spec).glob("*.json"):
        try:
            plan = read_plan(path, spec)
        except UserError:
            continue
        if plan.status == "ran" and plan.machine_key == machine_key(runtime):
            plans.append(plan)
    return sorted(plans, key=lambda p: p.created, reverse=True)


FLOP_RATE_MARGIN = 1.5  # a net not yet probed is assumed at most this much faster per FLOP than the best one probed


@dataclass(frozen=True)
class Probes:
    """How the planner measures this machine (probe.py; tests stand in for them):
    `speeds(candidate) -> {precision: Speed}`; `check_precision(candidate, precision) -> {"allowed": bool, ...}`
    for reduced precisions; `compiled(candidate, precision) -> Speed | why not` (None: torch.compile is not
    offered here); `flops(candidate) -> forward FLOPs per image` (None: every candidate is probed);
    `check_seconds(candidate, precision, speeds) -> what check_precision would take` (None: nothing)."""

    speeds: Callable[[Candidate], dict[str, Speed]]
    check_precision: Callable[[Candidate, str], dict]
    compiled: Callable[[Candidate, str], "Speed | str"] | None = None
    flops: Callable[[Candidate], float] | None = None
    check_seconds: Callable[[Candidate, str, dict], float] | None = None


def optimistic_cost(spec: CompetitionSpec, candidate: Candidate, flops: float, probed: list[tuple[CandidateCost, float, Speed]],
                    counts: ImageCounts) -> CandidateCost:
    """The candidate's cost if it ran FLOP_RATE_MARGIN times faster per FLOP than the fastest one probed
    so far: a lower bound on what probing it would find."""
    train_rate = max(speed.train_images_per_second * f for _, f, speed in probed) * FLOP_RATE_MARGIN
    predict_rate = max(speed.predict_images_per_second * f for _, f, speed in probed) * FLOP_RATE_MARGIN
    return candidate_cost(spec, candidate, "", "", Speed(train_rate / flops, predict_rate / flops), counts)


def probe_pool(spec: CompetitionSpec, budget: float, reserve: float, probes: Probes, counts: ImageCounts,
               elapsed: Callable[[], float], skip: dict[str, str]) -> tuple[list[CandidateCost], dict, list[str]]:
    """(costs, speeds, notes): the pool's candidates probed in family order, leaving out those `skip`
    names and those the plan could not choose even at an optimistic speed (`optimistic_cost`). Each cost
    is at the candidate's fastest precision, not yet checked for accuracy (`settle_precisions` checks
    those the plan chooses); `speeds`: {candidate name: {precision: Speed}}."""
    probed: list[tuple[CandidateCost, float, Speed]] = []  # (cost, forward FLOPs an image, speed at its precision)
    speeds, notes = {}, []
    for number, candidate in enumerate(family_order(list(spec.pool.candidates))):
        if number and candidate.name in skip:
            notes.append(skip[candidate.name])
            continue
        flops = probes.flops(candidate) if probes.flops is not None else None
        if number and flops and all(f for _, f, _ in probed):
            costs = [c for c, _, _ in probed]
            bound = optimistic_cost(spec, candidate, flops, probed, counts)
            decision = decide(spec, costs + [bound], budget - elapsed() - reserve, budget)
            if not any(c is bound for c, _, _ in decision.runs):
                notes.append(f"{candidate.name} not probed: even at {FLOP_RATE_MARGIN:g}x the best speed per FLOP "
                             f"measured here ({flops / 1e6:.0f} MFLOP an image), the plan could not choose it")
                continue
        speeds[candidate.name] = probes.speeds(candidate)
        precision = fastest_precision(speeds[candidate.name])
        chosen = _plain(speeds[candidate.name][precision])
        cost = candidate_cost(spec, candidate, precision, UNCHECKED, chosen, counts)
        probed.append((cost, flops or 0.0, chosen))
    return [c for c, _, _ in probed], speeds, notes


UNCHECKED = "not yet checked for accuracy"


def _plain(speed: Speed) -> Speed:
    return Speed(speed.train_images_per_second, speed.predict_images_per_second)


def decide_keeping_time_for_checks(costs: list[CandidateCost], speeds: dict, probes: Probes,
                                   decide_now: Callable[[list[CandidateCost], float], Decision]) -> Decision:
    """A decision that leaves time to check its own unchecked runs: otherwise a plan with time for two
    models checks both, and then has time for one."""
    held = 0.0
    for _ in range(len(costs) + 1):  # `held` grows each pass: a bounded search, never a loop
        decision = decide_now(costs, held)
        if probes.check_seconds is None:
            break
        needed = sum(probes.check_seconds(cost.candidate, cost.precision, speeds[cost.candidate.name])
                     for cost, _, _ in decision.runs if cost.precision_reason == UNCHECKED)
        if needed <= held:
            break
        held = needed
    return decision


def settle_precisions(spec: CompetitionSpec, costs: list[CandidateCost], speeds: dict, probes: Probes,
                      counts: ImageCounts, decide_now: Callable[[list[CandidateCost], float], Decision]
                      ) -> tuple[list[CandidateCost], Decision]:
    """Decide, then check the reduced precision of the runs chosen, and only theirs: a check is two short
    trainings (about a minute for a candidate on 2 cores), wasted on a candidate the plan leaves out.
    `decide_now(costs, seconds held back)` decides with the time left. A run whose check fails falls back
    to its next precision, and the time (less the checks') is split again until every chosen run's
    precision is checked."""
    while True:
        decision = decide_keeping_time_for_checks(costs, speeds, probes, decide_now)
        unchecked = [cost for cost, _, _ in decision.runs if cost.precision_reason == UNCHECKED]
        if not unchecked:
            return costs, decision
        for cost in unchecked:
            name = cost.candidate.name
            precision, reason = pick_precision(cost.candidate, speeds[name], probes.check_precision)
            settled = candidate_cost(spec, cost.candidate, precision, reason, _plain(speeds[name][precision]), counts)
            costs = [settled if c.candidate.name == name else c for c in costs]


def make_plan(spec: CompetitionSpec, budget: float, runtime: Runtime, probes: Probes, counts: ImageCounts,
              elapsed: Callable[[], float], past: list[PlanRecord] = ()) -> PlanRecord:
    """Decide with the speeds `probes` measure; `elapsed()`: seconds of the budget used so far (read after
    probing, which it includes); `past`: earlier plans of record here, newest first, whose outcomes say
    which candidates are not worth training."""
    pool = spec.pool
    _, left_out = offered_precisions(runtime)
    reserve = reserve_seconds(budget, spec.kernels_only)
    costs, speeds, probe_notes = probe_pool(spec, budget, reserve, probes, counts, elapsed,
                                            expected_zero_weight(list(past)))

    before_compile: dict[str, CandidateCost] = {}  # a study's trials are timed as the run was before compiling

    def offer_for(costs: list[CandidateCost]) -> StudyOffer | None:
        if spec.tuning is None or pool.study_share <= 0:
            return None
        costs = [before_compile.get(c.candidate.name, c) if c.compiled else c for c in costs]
        return StudyOffer({c.candidate.name: trial_seconds(spec, c, counts) for c in costs},
                          pool.study_share, pool.min_trials)

    def decide_now(costs: list[CandidateCost], held: float = 0.0) -> Decision:
        return decide(spec, costs, budget - elapsed() - reserve - held, budget, offer_for(costs))

    costs, decision = settle_precisions(spec, costs, speeds, probes, counts, decide_now)
    why_not = compile_offered(runtime)
    compile_notes = [f"torch.compile not offered: {why_not}"] if why_not else []
    if probes.compiled is not None and not why_not:
        compiled, compile_notes = consider_compile(spec, decision, probes.compiled, counts)
        # Split the time again: the compile probe took some, and compiled runs train faster.
        before_compile.update({c.candidate.name: c for c in costs})
        costs = [compiled.get(c.candidate.name, c) for c in costs]
        costs, decision = settle_precisions(spec, costs, speeds, probes, counts, decide_now)
    setup_seconds = elapsed()
    offer = offer_for(costs)
    notes = probe_notes + list(decision.notes) + compile_notes
    notes.append("no refit on all rows: it would cost a whole extra run per model, with no held-out rows to check it")
    study = None
    if decision.study_seconds > 0:
        from pipelines.planning.study_space import fit_search_space, study_name

        first = decision.runs[0][0]
        study = PlannedStudy(run=first.candidate.name, study=study_name(spec, first.candidate),
                             seconds=round(decision.study_seconds, 1),
                             trial_seconds=round(offer.trial_seconds[first.candidate.name], 1),
                             search_space=sorted(fit_search_space(spec, first.candidate)[0]))
    return PlanRecord(
        competition=spec.name, request=request_key(spec, budget, runtime), budget_seconds=budget,
        device=runtime.device.type, machine=machine_description(runtime), machine_key=machine_key(runtime),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"), runs=planned_runs(spec, decision),
        tta=pool.tta[: decision.views], ensemble=pool.ensemble, study=study, reserve_seconds=round(reserve, 1),
        setup_seconds=round(setup_seconds, 1), speeds=speeds_table(speeds), precisions_left_out=left_out, notes=notes)


def decide(spec: CompetitionSpec, costs: list[CandidateCost], seconds: float, budget: float,
           offer: StudyOffer | None = None) -> Decision:
    """`choose` with the pool's settings."""
    pool = spec.pool
    return choose(costs, seconds, spec.folds.n_splits, pool.max_models, [view_passes(v) for v in pool.tta], budget,
                  pool.min_share, offer, pool.max_stretch or MAX_STRETCH)


def planned_runs(spec: CompetitionSpec, decision: Decision) -> list[PlannedRun]:
    passes = tta_passes([view_passes(v) for v in spec.pool.tta], decision.views)
    runs = []
    for cost, epochs, folds in decision.runs:
        runs.append(PlannedRun(
            run=cost.candidate.as_run(epochs, cost.precision, cost.compiled), family=cost.candidate.family,
            folds=list(range(folds)),
            min_epochs=cost.candidate.min_epochs, seconds_per_epoch=round(cost.seconds_per_epoch, 2),
            seconds_per_fold=round(epochs * cost.seconds_per_epoch + cost.seconds_fixed_per_fold, 1),
            tta_seconds_per_fold=round(cost.seconds_per_view_per_fold * passes, 1),
            precision_reason=cost.precision_reason))
    resolve_teachers(runs)
    return runs


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
        from pipelines.planning.probe import (check_reduced_precision, check_seconds, forward_flops, probe_compiled,
                                              probe_run)

        print(f"plan: probing up to {len(spec.pool.candidates)} candidates on {machine_description(runtime)}", flush=True)
        probes = Probes(lambda c: probe_run(spec, c, data, runtime),
                        lambda c, p: check_reduced_precision(spec, c, data, runtime, p, family=c.family),
                        lambda c, p: probe_compiled(spec, c.model_copy(update={"precision": p}), data, runtime,
                                                    family=c.family),
                        # On a GPU small nets run far from peak, so FLOPs bound nothing there: probe them all.
                        None if runtime.is_cuda else lambda c: forward_flops(spec, c),
                        lambda c, p, speeds: check_seconds(spec, c, data, runtime, p, speeds, family=c.family))
        plan = make_plan(spec, budget, runtime, probes, ImageCounts(len(data.labels), len(data.test_images)), elapsed,
                         past_plans(spec, runtime))
        save_plan(plan, path)
    return plan, path, False


def speeds_table(speeds: dict) -> dict:
    """The plan's record of every speed measured: {candidate: {precision: {train/predict images/s}}}."""
    return {name: {p: {"train_images_per_second": s.train_images_per_second,
                       "predict_images_per_second": s.predict_images_per_second} for p, s in by_precision.items()}
            for name, by_precision in speeds.items()}


def fastest_precision(speeds: dict) -> str:
    return max(speeds, key=lambda p: speeds[p].train_images_per_second)


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
            where = f" on {check['checked_on']}" if check.get("checked_on") else ""
            return precision, (f"{ratio:.2f}x {baseline} training; accuracy check {check['reduced_accuracy']:.4f} vs "
                               f"fp32 {check['fp32_accuracy']:.4f} after {check['steps']} steps{where}")
    return baseline, "only fp32 measured"
