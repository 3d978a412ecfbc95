"""The time-budget planner and the deadline guard: decisions from fake speeds and a fake clock, then
real budget runs on digits through the local host (plan of record, reuse, replay, shortening)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from competition.errors import SpecError
from competition.recipe import Candidate, ModelRun, parse_duration
from competition.spec import SPEC_DIR, load_spec
from pipelines.__main__ import main as pipelines_main
from pipelines.execution.runner import DeadlineGuard, Unit, run_units, units_of
from pipelines.planning.plan import (CandidateCost, Decision, PlannedRun, PlanRecord, StudyOffer, choose,
                                     consider_compile, order_by_family)
from pipelines.planning.study_space import fit_search_space, own_values
from pipelines.stages.artifacts import read_manifest


def cost(name: str, family: str, epoch_s: float, epochs: int = 10, min_epochs: int = 3, fixed: float = 5.0,
         view_s: float = 2.0) -> CandidateCost:
    candidate = Candidate(model="cnn3", alias=name, family=family, epochs=epochs, min_epochs=min_epochs)
    return CandidateCost(candidate, "fp32", "test", epoch_s, fixed, view_s)


# --- the planner's decisions, from fake speeds ----------------------------------------------------------


def test_family_first_order_puts_a_new_family_before_a_repeat():
    ordered = order_by_family([cost("a", "cnn", 1), cost("b", "cnn", 1), cost("c", "resnet", 1)])
    assert [c.candidate.name for c in ordered] == ["a", "c", "b"]


def test_medium_budget_ensembles_two_families_at_most_of_their_epochs():
    costs = [cost("a", "cnn", 10), cost("b", "cnn", 5), cost("c", "resnet", 8)]
    # a alone at full epochs: 105 s; a + c at 90%: 90 + 72 + 10 = 172 s; with b too, 85% would need 216 s.
    decision = choose(costs, 180, n_splits=5, max_models=3, view_passes=[1, 1], budget=5000)
    names = [(c.candidate.name, epochs, folds) for c, epochs, folds in decision.runs]
    assert [n for n, _, _ in names] == ["a", "c"], names  # c before b: a new family first
    assert all(folds == 1 for _, _, folds in names)
    assert all(epochs == 9 for _, epochs, _ in names), names
    assert any("b left out" in note for note in decision.notes)


def test_models_are_not_bought_with_epochs():
    costs = [cost("a", "cnn", 10), cost("c", "resnet", 8)]
    decision = choose(costs, 150, n_splits=5, max_models=3, view_passes=[1], budget=5000)
    # a + c would get 74% of their epochs: the planner keeps a at all of its epochs instead.
    assert [(c.candidate.name, epochs) for c, epochs, _ in decision.runs] == [("a", 14)]  # 145 s / 10: stretched
    # With min_share 1.0, 94% is not enough either (180 s); at 200 s both get all their epochs.
    assert len(choose(costs, 180, 5, 3, [1], 5000, min_share=1.0).runs) == 1
    assert [e for _, e, _ in choose(costs, 200, 5, 3, [1], 5000, min_share=1.0).runs] == [10, 10]


def test_large_budget_buys_folds_then_longer_schedules():
    costs = [cost("a", "cnn", 1), cost("c", "resnet", 1)]
    decision = choose(costs, 10_000, n_splits=5, max_models=3, view_passes=[1, 1, 4], budget=10_000)
    assert [(epochs, folds) for _, epochs, folds in decision.runs] == [(15, 5), (15, 5)]  # 1.5x epochs, all folds
    assert decision.views == 3  # every view is cheap here


def test_a_pool_can_forbid_longer_schedules_where_they_overfit():
    costs = [cost("a", "cnn", 1), cost("c", "resnet", 1)]
    # Time for 1.5x the epochs but not for a second fold: stretched by default, not with max_stretch 1.0.
    assert [e for _, e, _ in choose(costs, 40, 5, 3, [1], 10_000).runs] == [15, 15]
    assert [(e, f) for _, e, f in choose(costs, 40, 5, 3, [1], 10_000, max_stretch=1.0).runs] == [(10, 1), (10, 1)]


def test_tiny_budget_trains_the_first_candidate_that_fits_its_min_epochs():
    costs = [cost("slow", "resnet", 100), cost("fast", "cnn", 10)]
    decision = choose(costs, 40, n_splits=5, max_models=3, view_passes=[1], budget=60)
    [(chosen, epochs, folds)] = decision.runs
    assert chosen.candidate.name == "fast" and folds == 1 and epochs == 3
    assert "budget too small" in decision.notes[0]
    decision = choose(costs, 10, n_splits=5, max_models=3, view_passes=[1], budget=60)
    assert [(c.candidate.name, epochs) for c, epochs, _ in decision.runs] == [("fast", 1)]  # none fits: the fastest


def test_the_preferred_candidate_short_of_time_is_shortened_not_replaced():
    costs = [cost("best", "resnet", 10, epochs=10, min_epochs=4), cost("fast", "cnn", 3, epochs=10, min_epochs=4)]
    # 95 s: "best" gets 9 of its 10 epochs; "fast" would fit at full length, but is the weaker choice.
    decision = choose(costs, 95, n_splits=5, max_models=3, view_passes=[1], budget=5000, min_share=1.0)
    assert [(c.candidate.name, epochs) for c, epochs, _ in decision.runs] == [("best", 9)]
    assert "budget too small for 100% of best's epochs: best trains alone, 9 of its 10" in decision.notes[0]


def test_tta_views_are_left_out_when_they_cost_too_much():
    costs = [cost("a", "cnn", 1, view_s=100)]
    decision = choose(costs, 500, n_splits=5, max_models=1, view_passes=[1, 1], budget=500)
    assert decision.views == 1


# --- the deadline guard, with a fake clock ----------------------------------------------------------------


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def now(self) -> float:
        return self.t


def planned(name: str, epochs: int, folds: list[int], epoch_s: float = 10.0, min_epochs: int = 2) -> PlannedRun:
    run = ModelRun(model="cnn3", alias=name, epochs=epochs)
    return PlannedRun(run=run, family=name, folds=folds, seconds_per_epoch=epoch_s,
                      seconds_per_fold=epochs * epoch_s + 5, tta_seconds_per_fold=0, min_epochs=min_epochs)


def plan_of(*runs: PlannedRun) -> PlanRecord:
    return PlanRecord(competition="digits", request="r", budget_seconds=1000, device="cpu", machine="m",
                      machine_key="k", created="now", runs=list(runs), tta=["identity"], ensemble="hill_climb",
                      reserve_seconds=10, setup_seconds=0)


class FakeExecutor:
    """runner.Executor on the fake clock, one unit at a time: each advances the clock by `speed` x its
    planned time, as a slow machine would."""

    slots, clock = 1, None

    def __init__(self, clock: FakeClock, speed: float):
        self.fake_clock, self.speed, self.trained, self.queued = clock, speed, [], {}

    def submit(self, unit: Unit, limit):
        self.queued[unit.what] = unit
        return unit.what

    def next_done(self, handles):
        unit = self.queued.pop(handles[0])
        seconds = self.speed * unit.planned.seconds_per_fold
        self.fake_clock.t += seconds
        self.trained.append((unit.run.name, unit.fold, unit.run.epochs))
        return handles[0], f"{unit.what}", seconds


def run_plan(plan: PlanRecord, executor, guard: DeadlineGuard | None) -> dict:
    if guard is not None:
        guard.plan = plan
    return run_units(units_of(plan), executor, guard)


def test_units_go_fold_major():
    plan = plan_of(planned("a", 10, [0, 1]), planned("b", 10, [0, 1]))
    assert [u.what for u in units_of(plan)] == ["a fold 0", "b fold 0", "a fold 1", "b fold 1"]


def test_on_time_the_guard_changes_nothing():
    clock = FakeClock()
    plan = plan_of(planned("a", 10, [0]), planned("b", 10, [0]))
    executor = FakeExecutor(clock, speed=1.0)
    run_plan(plan, executor, DeadlineGuard(clock, None, train_deadline=300, slack=25))
    assert executor.trained == [("a", 0, 10), ("b", 0, 10)]


def test_behind_plan_the_runs_not_started_are_shortened_then_units_dropped():
    clock = FakeClock()
    plan = plan_of(planned("a", 10, [0, 1]), planned("b", 10, [0, 1]))  # 4 units of 105 s planned
    executor = FakeExecutor(clock, speed=2.0)  # the machine runs at half the probed speed
    guard = DeadlineGuard(clock, None, train_deadline=450, slack=10)
    run_plan(plan, executor, guard)
    first, *rest = executor.trained
    assert first == ("a", 0, 10)  # started on plan
    assert rest[0][0] == "b" and rest[0][2] < 10, executor.trained  # b shortened before it started
    assert rest[0][2] >= 2  # never below min_epochs
    b = next(p for p in plan.runs if p.run.name == "b")
    assert b.seconds_per_fold == b.run.epochs * 10 + 5  # its estimate follows its new length
    assert len(executor.trained) < 4 and plan.runs[0].dropped_folds + plan.runs[-1].dropped_folds
    assert clock.t <= 450 + 10 + 2 * 105, clock.t  # the dropped units would have taken longer
    assert any("behind plan" in n for n in guard.notes) and any("dropped" in n for n in guard.notes)


def test_the_first_unit_always_runs():
    clock = FakeClock()
    clock.t = 1000.0  # already past the deadline
    plan = plan_of(planned("a", 10, [0]), planned("b", 10, [0]))
    executor = FakeExecutor(clock, speed=1.0)
    run_plan(plan, executor, DeadlineGuard(clock, None, train_deadline=500, slack=10))
    assert [t[0] for t in executor.trained] == ["a"] and plan.dropped_runs == ["b"]


def test_a_running_unit_is_shortened_when_the_deadline_nears():
    clock = FakeClock()
    plan = plan_of(planned("a", 10, [0]))
    guard = DeadlineGuard(clock, None, train_deadline=100, slack=0)
    unit = units_of(plan)[0]
    clock.t = 20.0
    assert guard.epoch_limit(unit)(2, 10.0) == 10  # 2 done, 8 x 10 s fit in the 80 s left
    clock.t = 60.0
    assert guard.epoch_limit(unit)(3, 15.0) == 5  # 40 s left at 15 s an epoch: 2 more
    clock.t = 99.0
    assert guard.epoch_limit(unit)(4, 15.0) == 5  # always one more, to bring the learning rate down


class FakeWorkers:
    """runner.Executor on the fake clock: `slots` units at once, each taking its planned time."""

    clock = None

    def __init__(self, clock: FakeClock, slots: int):
        self.fake_clock, self.slots, self.ends, self.finished = clock, slots, {}, []

    def submit(self, unit: Unit, limit):
        handle = (unit.what, self.fake_clock.t)
        self.ends[handle] = (self.fake_clock.t + unit.planned.seconds_per_fold, unit)
        return handle

    def next_done(self, handles):
        handle = min(handles, key=lambda h: self.ends[h][0])
        end, unit = self.ends.pop(handle)
        self.fake_clock.t = max(self.fake_clock.t, end)
        self.finished.append(unit.what)
        return handle, unit.what, unit.planned.seconds_per_fold


def test_parallel_units_come_back_in_fold_order_whatever_finishes_first():
    clock = FakeClock()
    plan = plan_of(planned("long", 20, [0, 1]), planned("short", 4, [0, 1]))
    workers = FakeWorkers(clock, slots=2)
    trained = run_plan(plan, workers, guard=None)
    assert workers.finished[0] == "short fold 0"  # submitted second, done first
    assert trained == {"long": ["long fold 0", "long fold 1"], "short": ["short fold 0", "short fold 1"]}
    assert clock.t == 205 + 45  # two slots: long fold 0 beside short folds 0, 1 and then long fold 1


def test_the_guard_counts_every_worker_before_dropping_units():
    plan = plan_of(planned("a", 10, [0, 1]), planned("b", 10, [0, 1]))  # 4 units of 105 s
    clock = FakeClock()
    run_plan(plan, FakeExecutor(clock, speed=1.0), DeadlineGuard(clock, None, train_deadline=250, slack=5))
    assert [p.run.epochs for p in plan.runs] != [10, 10]  # one process: 420 s do not fit in 250, runs are cut
    plan = plan_of(planned("a", 10, [0, 1]), planned("b", 10, [0, 1]))
    clock = FakeClock()
    trained = run_plan(plan, FakeWorkers(clock, slots=2), DeadlineGuard(clock, plan, train_deadline=250, slack=5))
    assert sum(len(v) for v in trained.values()) == 4 and clock.t == 210  # two workers: all of it, on time
    assert [p.run.epochs for p in plan.runs] == [10, 10] and not plan.runs[0].dropped_folds + plan.runs[1].dropped_folds


# --- spec and command line ----------------------------------------------------------------------------------


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("15m", 900), ("2h", 7200), ("1h30m", 5400), (120, 120)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["15", "15 minutes", "-5m", "0s", "1000h", "m"])
def test_bad_budget_is_one_line(text, capsys):
    assert pipelines_main(["submit", "--comp", "digits", f"--budget={text}"]) == 2  # as make passes it
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: BUDGET={text}:"), err


def test_a_study_is_planned_only_from_time_left_after_full_epochs():
    costs = [cost("a", "cnn", 10), cost("c", "resnet", 8)]  # full epochs on one fold: 105 s + 85 s
    offer = StudyOffer({"a": 10.0, "c": 10.0}, share=0.25, min_trials=8)
    # 200 s: 10 s are left after both models' full epochs, which buys no 8 trials of 10 s.
    decision = choose(costs, 200, 5, 3, [1], 5000, 1.0, offer)
    assert decision.study_seconds == 0 and any("no Optuna study" in n for n in decision.notes), decision.notes
    assert [e for _, e, _ in decision.runs] == [10, 10]
    # 600 s: a quarter (150 s) goes to the study, on the first model; the rest buys two folds at 11 epochs.
    decision = choose(costs, 600, 5, 3, [1], 5000, 1.0, offer)
    assert decision.study_seconds == pytest.approx(150)
    assert any("Optuna study on a" in n for n in decision.notes), decision.notes
    assert [(e, f) for _, e, f in decision.runs] == [(11, 2), (11, 2)]
    # No search space in the spec (no offer): no study, the time buys folds.
    assert choose(costs, 600, 5, 3, [1], 5000, 1.0).study_seconds == 0


def test_compile_is_probed_only_where_it_could_pay_and_used_only_where_it_does():
    from pipelines.planning.plan import ImageCounts, candidate_cost
    from pipelines.planning.probe import Speed

    spec = load_spec("digits")  # 1,437 training rows, 5 folds: 1,149 per fold, 17 steps of 64
    candidate = spec.pool.candidates[0]
    eager = candidate_cost(spec, candidate, "fp32", "fastest", Speed(100.0, 1000.0), ImageCounts(1437, 360))  # ~10.9 s of steps per epoch
    asked = []

    def probe(answer):
        def compiled(c, precision):
            asked.append((c.name, precision))
            return answer
        return compiled

    few = Decision([(eager, 2, 1)], 1, [])  # 22 s of steps: could never repay a compile
    assert consider_compile(spec, few, probe(Speed(1000.0, 1000.0, 1.0)), ImageCounts(1437, 360)) == (
        {}, [f"torch.compile not probed for {candidate.name}: 0.4 min of training steps would not repay a compile "
             "(~30 s) at a 1.10x speed-up"])
    assert asked == []
    many = Decision([(eager, 30, 2)], 1, [])  # 11 min of steps
    compiled, notes = consider_compile(spec, many, probe(Speed(130.0, 1000.0, 20.0)), ImageCounts(1437, 360))
    assert asked == [(candidate.name, "fp32")]
    assert compiled[candidate.name].compiled and "1.30x training steps, 20 s to compile" in notes[0], notes
    assert compiled[candidate.name].seconds_per_epoch < eager.seconds_per_epoch
    assert "torch.compile: 1.30x" in compiled[candidate.name].precision_reason
    compiled, notes = consider_compile(spec, many, probe(Speed(104.0, 1000.0, 20.0)), ImageCounts(1437, 360))
    assert not compiled and "not used" in notes[0] and "1.04x" in notes[0]  # within the probe's noise
    compiled, notes = consider_compile(spec, many, probe("torch.compile failed: InductorError: no cc"),
                                       ImageCounts(1437, 360))
    assert not compiled and notes == [f"torch.compile not used for {candidate.name}: torch.compile failed: "
                                      "InductorError: no cc"]


def _four_candidate_spec():
    """Fashion-MNIST with the pool this test reasons about (3 models at most, each only at full length)."""
    spec = load_spec("fashion-mnist")
    candidates = [Candidate(model="fastresnet", family="residual", epochs=14, min_epochs=4),
                  Candidate(model="fastcnn", family="plain-cnn", epochs=14, min_epochs=4, model_args={"width": 24}),
                  Candidate(model="deeper_cnn", family="flatten-fc", epochs=12, min_epochs=5),
                  Candidate(model="resnet18", alias="resnet18-w16", family="residual", epochs=14, model_args={"width": 16})]
    pool = spec.pool.model_copy(update={"candidates": candidates, "max_models": 3, "min_share": 1.0, "study_share": 0.0})
    return spec.model_copy(update={"pool": pool})


# Training images/s on a 2-core AVX2 EPYC (probe.json, 2026-12-03), and forward MFLOP an image (counted).
MEASURED = {"fastresnet": (1051, 2186, 20.6), "fastcnn": (956, 2738, 24.7), "deeper_cnn": (1681, 3511, 15.5),
            "resnet18-w16": (415, 1073, 57.1)}


def _fake_probes(probed: list):
    from pipelines.planning.plan import Probes
    from pipelines.planning.probe import Speed

    def speeds(candidate):
        probed.append(candidate.name)
        train, predict, _ = MEASURED[candidate.name]
        return {"fp32-cl": Speed(train, predict)}

    return Probes(speeds, lambda c, p: {"allowed": True}, None, lambda c: MEASURED[c.name][2] * 1e6)


@pytest.mark.parametrize("budget, probed_names, chosen", [
    (900, ["fastresnet"], ["fastresnet"]),  # fastresnet alone fills 15 minutes: nothing else could join
    (3600, ["fastresnet", "fastcnn", "deeper_cnn"], ["fastresnet", "fastcnn", "deeper_cnn"]),  # then max_models
])
def test_only_candidates_the_plan_could_choose_are_probed(budget, probed_names, chosen):
    import torch

    from pipelines.machine.device import Runtime
    from pipelines.planning.plan import ImageCounts, make_plan

    spec, probed = _four_candidate_spec(), []
    plan = make_plan(spec, budget, Runtime(torch.device("cpu")), _fake_probes(probed), ImageCounts(60_000, 10_000),
                     lambda: 10.0)
    assert probed == probed_names
    assert [p.run.name for p in plan.runs] == chosen
    assert sorted(plan.speeds) == sorted(probed_names)
    skipped = [n for n in plan.notes if "not probed" in n]
    assert len(skipped) == 4 - len(probed_names), plan.notes
    assert all("MFLOP an image" in n for n in skipped)


def _bf16_probes(probed: list, checked: list, failing_family: str):
    """Probes on a machine where bf16 trains twice as fast; `failing_family`'s accuracy check fails."""
    from pipelines.planning.plan import Probes
    from pipelines.planning.probe import Speed

    def speeds(candidate):
        probed.append(candidate.name)
        train, predict, _ = MEASURED[candidate.name]
        return {"fp32-cl": Speed(train, predict), "bf16-cl": Speed(2 * train, 2 * predict)}

    def check(candidate, precision):
        checked.append(candidate.name)
        return {"allowed": candidate.family != failing_family, "reduced_accuracy": 0.80, "fp32_accuracy": 0.81,
                "steps": 150}

    return Probes(speeds, check, None, lambda c: MEASURED[c.name][2] * 1e6)


@pytest.mark.parametrize("budget, probed_names, checked_names, chosen", [
    # deeper_cnn is probed (it might have joined) but not chosen: its two short trainings are saved.
    (600, ["fastresnet", "deeper_cnn"], ["fastresnet"], [("fastresnet", "bf16-cl")]),
    # fastcnn's check fails: it falls back to fp32 and the time is split again.
    (1800, ["fastresnet", "fastcnn", "deeper_cnn"], ["fastresnet", "fastcnn", "deeper_cnn"],
     [("fastresnet", "bf16-cl"), ("fastcnn", "fp32-cl"), ("deeper_cnn", "bf16-cl")]),
])
def test_only_the_runs_a_plan_chooses_have_their_reduced_precision_checked(budget, probed_names, checked_names,
                                                                            chosen):
    import torch

    from pipelines.machine.device import Runtime
    from pipelines.planning.plan import ImageCounts, make_plan

    probed, checked = [], []
    plan = make_plan(_four_candidate_spec(), budget, Runtime(torch.device("cpu")),
                     _bf16_probes(probed, checked, failing_family="plain-cnn"), ImageCounts(60_000, 10_000), lambda: 10.0)
    assert probed == probed_names and checked == checked_names
    assert [(p.run.name, p.run.precision) for p in plan.runs] == chosen
    reasons = {p.run.name: p.precision_reason for p in plan.runs}
    assert "accuracy check 0.8000 vs fp32 0.8100 after 150 steps" in reasons["fastresnet"]
    assert all(reason.startswith(("2.00x fp32-cl", "fastest allowed (1.00x")) for reason in reasons.values()), reasons


@pytest.mark.parametrize("estimated, checked_names", [
    (60.0, ["fastresnet"]),  # the plan keeps a minute for each check, so fastcnn does not fit: not checked
    (None, ["fastresnet", "fastcnn"]),  # without the estimate both are chosen, both checked, and one is left
])
def test_a_plan_keeps_time_for_the_checks_of_the_runs_it_chooses(estimated, checked_names):
    import dataclasses

    import torch

    from pipelines.machine.device import Runtime
    from pipelines.planning.plan import ImageCounts, make_plan

    probed, checked, clock = [], [], [10.0]
    probes = _bf16_probes(probed, checked, failing_family="none")
    check = probes.check_precision

    def timed_check(candidate, precision):
        clock[0] += 60.0  # each check takes a minute of the budget
        return check(candidate, precision)

    probes = dataclasses.replace(probes, check_precision=timed_check,
                                 check_seconds=None if estimated is None else lambda c, p, speeds: estimated)
    plan = make_plan(_four_candidate_spec(), 900, Runtime(torch.device("cpu")), probes, ImageCounts(60_000, 10_000),
                     lambda: clock[0])
    assert probed == ["fastresnet", "fastcnn"] and checked == checked_names
    assert [(p.run.name, p.run.precision) for p in plan.runs] == [("fastresnet", "bf16-cl")]
    assert plan.setup_seconds == 10.0 + 60.0 * len(checked_names)


def test_a_check_is_estimated_from_the_probed_speeds_and_costs_nothing_once_cached(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import numpy as np
    import torch

    from pipelines.machine.device import Runtime
    from pipelines.planning.probe import CHECK_STEPS, Speed, _check_key, _update_cache, check_seconds

    monkeypatch.setenv("KPIPE_DATA", str(tmp_path))
    spec, runtime = _four_candidate_spec(), Runtime(torch.device("cpu"))
    candidate = spec.pool.candidates[0]
    data = SimpleNamespace(fold_of_row=np.arange(10_000) % 5)  # 8,000 training rows, 2,000 held out
    speeds = {"fp32-cl": Speed(500.0, 1000.0), "bf16-cl": Speed(1000.0, 2000.0)}
    steps = CHECK_STEPS * candidate.batch_size
    expected = steps / 500.0 + 2000 / 1000.0 + steps / 1000.0 + 2000 / 2000.0
    assert check_seconds(spec, candidate, data, runtime, "bf16-cl", speeds, family="residual") == pytest.approx(expected)
    _update_cache(runtime, _check_key(spec, candidate, "bf16-cl", CHECK_STEPS, "residual"), {"allowed": True})
    assert check_seconds(spec, candidate, data, runtime, "bf16-cl", speeds, family="residual") == 0.0


def test_a_candidate_that_ended_with_zero_weight_is_not_probed_or_trained_again():
    import torch

    from pipelines.machine.device import Runtime
    from pipelines.planning.plan import ImageCounts, expected_zero_weight, make_plan

    spec, probed = _four_candidate_spec(), []
    runtime = Runtime(torch.device("cpu"))
    first = make_plan(spec, 3600, runtime, _fake_probes(probed), ImageCounts(60_000, 10_000), lambda: 10.0)
    assert [p.run.name for p in first.runs] == ["fastresnet", "fastcnn", "deeper_cnn"]
    ran = first.model_copy(update={"status": "ran", "actual": {"weights": {"fastresnet": 0.6, "fastcnn": 0.4, "deeper_cnn": 0.0}}})
    skip = expected_zero_weight([ran])
    assert list(skip) == ["deeper_cnn"] and "weight 0.00 after" in skip["deeper_cnn"]
    probed.clear()
    second = make_plan(spec, 3600, runtime, _fake_probes(probed), ImageCounts(60_000, 10_000), lambda: 10.0, [ran])
    assert "deeper_cnn" not in probed and [p.run.name for p in second.runs] == ["fastresnet", "fastcnn", "resnet18-w16"]
    assert skip["deeper_cnn"] in second.notes
    # The newest outcome counts: a later plan in which it earned weight lifts the skip; a lone run says nothing.
    later = ran.model_copy(update={"created": "9999", "actual": {"weights": {"fastresnet": 0.7, "deeper_cnn": 0.3}}})
    assert expected_zero_weight([later, ran]) == {}
    alone = ran.model_copy(update={"actual": {"weights": {"deeper_cnn": 0.0}}})
    assert expected_zero_weight([alone]) == {}


def test_a_family_compiled_here_answers_for_its_siblings_without_compiling(tmp_path, monkeypatch):
    import torch

    from pipelines.machine.device import Runtime
    from pipelines.planning.probe import Speed, _update_cache, probe_compiled, run_key, stable_hash

    monkeypatch.setenv("KPIPE_DATA", str(tmp_path))
    spec, runtime = _four_candidate_spec(), Runtime(torch.device("cpu"))
    fastresnet, resnet18 = spec.pool.candidates[0], spec.pool.candidates[3]  # both of the family 'residual'
    sibling = resnet18.model_copy(update={"precision": "fp32-cl"})
    _update_cache(runtime, run_key(spec, sibling), {"run": "resnet18-w16", "speeds": {"fp32-cl": {
        "train_images_per_second": 400.0, "predict_images_per_second": 1000.0}}})
    family_key = "compile-family-" + stable_hash({"family": "residual", "precision": "fp32-cl",
                                                  "image": spec.image.key_dump()})
    _update_cache(runtime, family_key, {"run": fastresnet.name, "warmup_seconds": 21.0, "ratio": 0.9})
    # data=None: anything that tried to measure would fail; the family's verdict answers instead.
    assert probe_compiled(spec, sibling, None, runtime, family="residual") == Speed(360.0, 1000.0, 21.0)
    _update_cache(runtime, family_key, {"run": fastresnet.name, "failed": "torch.compile failed: X"})
    assert probe_compiled(spec, sibling, None, runtime, family="residual") == "torch.compile failed: X"


def test_the_speed_key_ignores_what_does_not_change_a_step():
    from pipelines.planning.probe import run_key

    spec = _four_candidate_spec()
    run = spec.pool.candidates[0]
    same = run.model_copy(update={"label_smoothing": 0.3, "alias": "other", "epochs": 3,
                                  "optimizer": run.optimizer.model_copy(update={"lr": 0.01})})
    assert run_key(spec, same) == run_key(spec, run)
    assert run_key(spec, run.model_copy(update={"batch_size": 64})) != run_key(spec, run)
    assert run_key(spec, run.model_copy(update={"model_args": {"width": 48}})) != run_key(spec, run)
    # Variants of one competition (the same images' shape) share it.
    assert run_key(load_spec("fashion-mnist-code"), run) == run_key(spec, run)


def test_search_space_fits_each_candidate(tmp_path):
    spec = load_spec("fashion-mnist")
    by_model = {c.model: c for c in spec.pool.candidates}
    space, left_out = fit_search_space(spec, by_model["fastresnet"])
    assert "model_args.width" in space and "model_args.dropout" not in space
    assert left_out == ["model_args.dropout (fastresnet takes no 'dropout')"]
    space, left_out = fit_search_space(spec, by_model["fastcnn"])
    assert "model_args.dropout" in space and not left_out
    # The candidate's own recipe, where it lies inside the space, is the study's first trial.
    assert own_values(by_model["fastcnn"], space) == {
        "optimizer.name": "sgd", "optimizer.lr": 0.1, "optimizer.weight_decay": 0.0005, "schedule.name": "onecycle",
        "label_smoothing": 0.1, "augment.policy": "light", "augment.shift": 2, "mixup_alpha": 0.0,
        "model_args.width": 24, "model_args.dropout": 0.0}
    library = Candidate(model="timm:resnet18", family="residual", epochs=5)
    assert not [p for p in fit_search_space(spec, library)[0] if p.startswith("model_args.")]
    # Where colour defines the class, colour-changing policies are no choice.
    tiny = yaml.safe_load((SPEC_DIR / "tiny-image-challenge.yaml").read_text())
    tiny["tuning"] = {"search_space": {"augment.policy": {"type": "categorical", "choices": ["light", "medium", "geometric"]}}}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tiny))
    tiny_spec = load_spec(str(tmp_path / "tiny.yaml"))
    space, _ = fit_search_space(tiny_spec, tiny_spec.pool.candidates[0])
    assert space["augment.policy"].choices == ["light", "geometric"]


def _digits_spec(tmp_path: Path, edit) -> Path:
    spec = yaml.safe_load((SPEC_DIR / "digits.yaml").read_text())
    edit(spec)
    path = tmp_path / "digits-plan.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_candidate_min_epochs_above_epochs_is_refused(tmp_path):
    path = _digits_spec(tmp_path, lambda s: s["pool"]["candidates"][0].update(min_epochs=99))
    with pytest.raises(SpecError, match=r"pool\.candidates\.0.*min_epochs \(99\) is above epochs"):
        load_spec(str(path))


def test_colour_changing_augmentation_is_refused_where_colour_defines_the_class(tmp_path, capsys):
    spec = yaml.safe_load((SPEC_DIR / "tiny-image-challenge.yaml").read_text())
    number = next(i for i, c in enumerate(spec["pool"]["candidates"]) if c["model"] == "fastcnn")
    spec["pool"]["candidates"][number]["augment"]["policy"] = "medium"
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert pipelines_main(["prepare", "--comp", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: competition/tiny-image-challenge.yaml: key 'pool.candidates.{number}.augment.policy': "
                          "policy 'medium' changes colour"), err
    assert "geometric" in err and "\n" not in err


def test_profile_and_budget_exclude_each_other(capsys):
    assert pipelines_main(["submit", "--comp", "digits", "--profile", "quick", "--budget", "5m"]) == 2
    assert "PROFILE=quick pins a fixed recipe" in capsys.readouterr().err


@pytest.mark.parametrize("content, message", [
    ("{not json", "not JSON"),
    ('{"version": 1}', "field 'competition'"),
])
def test_bad_plan_file_is_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "plan.json"
    path.write_text(content)
    assert pipelines_main(["submit", "--comp", "digits", "--plan", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: PLAN={path}:") and message in err and "\n" not in err, err


# --- real budget runs on digits -------------------------------------------------------------------------------


@pytest.mark.slow
def test_budget_run_plans_trains_and_reuses_its_plan(pipeline_env, host, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KPIPE_SUBMISSIONS", str(tmp_path / "submissions"))
    monkeypatch.setenv("DRY_RUN", "1")
    assert pipelines_main(["submit", "--comp", "digits", "--budget", "40s"]) == 0
    out = capsys.readouterr().out
    assert "plan: probing up to 4 candidates" in out and "planned vs actual" in out
    [record] = (pipeline_env / "digits" / "plans").glob("*.json")
    plan = json.loads(record.read_text())
    assert plan["status"] == "ran" and plan["budget_seconds"] == 40 and plan["runs"]
    assert plan["actual"]["total_seconds"] > 0
    trained = sorted((pipeline_env / "digits" / "train").glob("*/fold*/manifest.json"))
    assert trained
    probe_cache = next((pipeline_env / "machine").glob("*/probe.json"))
    assert "speeds" in json.dumps(json.loads(probe_cache.read_text()))

    # The same command again: the plan of record, no probing, nothing trained, the same submission.
    assert pipelines_main(["submit", "--comp", "digits", "--budget", "40s"]) == 0
    out = capsys.readouterr().out
    assert "reusing the plan of record" in out and "probe:" not in out and " epoch 1/" not in out
    assert sorted((pipeline_env / "digits" / "train").glob("*/fold*/manifest.json")) == trained
    log = (tmp_path / "submissions" / "digits" / "log.csv").read_text().splitlines()
    hashes = {line.split(",")[3] for line in log[1:]}
    assert len(log) >= 2 and len(hashes) == 1, log

    # Replaying the plan elsewhere reproduces its decisions: the same folders, the same predictions.
    assert pipelines_main(["submit", "--comp", "digits", "--plan", str(record)]) == 0
    out = capsys.readouterr().out
    assert "replaying a plan" in out and " epoch 1/" not in out


@pytest.mark.slow
def test_budget_run_studies_first_and_a_later_run_extends_the_study(pipeline_env, host, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KPIPE_SUBMISSIONS", str(tmp_path / "submissions"))
    monkeypatch.setenv("DRY_RUN", "1")

    def studied(spec):
        spec["pool"]["candidates"] = [{**spec["pool"]["candidates"][0], "epochs": 4, "min_epochs": 1}]
        spec["pool"].update(tta=["identity"], study_share=0.5, min_trials=2)
        spec["tuning"].update(epochs=2, pruner={"name": "none"})

    spec_path = str(_digits_spec(tmp_path, studied))
    assert pipelines_main(["submit", "--comp", spec_path, "--budget", "45s"]) == 0
    out = capsys.readouterr().out
    assert "Optuna study 'plan-digits-cnn3-" in out and "study: best" in out, out[-3000:]
    [record] = (pipeline_env / "digits" / "plans").glob("*.json")
    plan = json.loads(record.read_text())
    study = plan["study"]
    assert study["done"] and study["trials_run"] >= 2 and study["trials_in_study"] == study["trials_run"]
    assert study["own_recipe_value"] is not None  # the candidate's own recipe ran as a trial
    [run] = plan["runs"]
    for path, value in study["best_params"].items():  # the best trial's parameters are what trained
        head, _, key = path.partition(".")
        assert (run["run"][head][key] if key else run["run"][head]) == value, path
    assert "Optuna study on cnn3" in "\n".join(plan["notes"])

    # The same command: the plan of record, with its study's result; no trial, nothing trained.
    assert pipelines_main(["submit", "--comp", spec_path, "--budget", "45s"]) == 0
    out = capsys.readouterr().out
    assert "reusing the plan of record" in out and " epoch 1/" not in out and "study: '" not in out

    # Another budget plans again, and extends the same (persistent) study.
    assert pipelines_main(["submit", "--comp", spec_path, "--budget", "50s"]) == 0
    out = capsys.readouterr().out
    assert f"{study['trials_in_study']} finished trials" in out, out[-3000:]
    later = [json.loads(p.read_text()) for p in (pipeline_env / "digits" / "plans").glob("*.json") if p != record]
    assert later[0]["study"]["study"] == study["study"]
    assert later[0]["study"]["trials_in_study"] > study["trials_in_study"]


@pytest.mark.slow
def test_shortened_run_ends_its_schedule_and_replays_exactly(pipeline_env, host, tmp_path):
    from pipelines.context import setup
    from pipelines.stages.train import FoldJob, FoldOptions, train_fold

    spec_path = _digits_spec(tmp_path, lambda s: s.update(profiles={"quick": {"folds": [0], "models": [
        {"model": "cnn3", "model_args": {"width": 16}, "epochs": 8, "batch_size": 64,
         "optimizer": {"name": "sgd", "lr": 0.05}, "augment": {"policy": "light", "shift": 1}}]}}))
    spec = load_spec(str(spec_path))
    ctx = setup(spec, "quick")
    run = ctx.profile.models[0]
    asked = []

    def epochs_allowed(done: int, seconds: float) -> int:
        asked.append(done)
        return 4 if done >= 2 else 8  # after epoch 2, the guard says: end at epoch 4

    output = train_fold(FoldJob(ctx.inputs, run, 0), FoldOptions(epochs_allowed=epochs_allowed))
    manifest = read_manifest(output.folder)
    assert manifest["shortened"] == {"from_epoch": 2, "epochs": 4, "rescheduled": False} and manifest["epochs_run"] == 4
    assert asked == [1, 2]  # not asked again once shortened
    history = (output.folder / "history.csv").read_text().splitlines()
    lrs = [float(row["lr"]) for row in csv.DictReader(history)]
    assert len(lrs) == 4 and lrs[3] < lrs[2] < lrs[1]  # the rate falls to the end
    assert manifest["val_accuracy"] > 0.5
    first = np.load(output.folder / "oof_probs.npy")

    # Replayed from the plan's record, with no guard: the same predictions.
    again = train_fold(FoldJob(ctx.inputs, run, 0), FoldOptions(force=True, shortening=(2, 4, False)))
    assert np.array_equal(np.load(again.folder / "oof_probs.npy"), first)

    # Cut after epoch 1, while the one-cycle rate still rises (its peak: epoch 2 of 8): the schedule is
    # rebuilt for 5 epochs, so the rate still reaches about its peak (0.05) before it falls.
    early = train_fold(FoldJob(ctx.inputs, run, 0), FoldOptions(force=True, epochs_allowed=lambda done, s: 5))
    assert read_manifest(early.folder)["shortened"] == {"from_epoch": 1, "epochs": 5, "rescheduled": True}
    lrs = [float(row["lr"]) for row in csv.DictReader((early.folder / "history.csv").read_text().splitlines())]
    assert len(lrs) == 5 and max(lrs) > 0.04 and lrs[-1] < lrs[-2] < max(lrs), lrs  # a linear fall would stay below 0.03
    early_oof = np.load(early.folder / "oof_probs.npy")
    replayed = train_fold(FoldJob(ctx.inputs, run, 0), FoldOptions(force=True, shortening=(1, 5, True)))
    assert np.array_equal(np.load(replayed.folder / "oof_probs.npy"), early_oof)


@pytest.mark.slow
def test_compiled_training_probes_trains_and_checkpoints_like_eager(pipeline_env, host, tmp_path):
    from pipelines.context import setup
    from pipelines.machine.device import compile_offered
    from pipelines.planning.probe import Speed, probe_compiled
    from pipelines.stages.predict import load_checkpoint
    from pipelines.stages.train import FoldJob, train_fold

    spec_path = _digits_spec(tmp_path, lambda s: s.update(profiles={"quick": {"folds": [0], "models": [
        {"model": "cnn3", "model_args": {"width": 16}, "epochs": 2, "batch_size": 64, "precision": "fp32",
         "optimizer": {"name": "sgd", "lr": 0.05}, "augment": {"policy": "light", "shift": 1}}]}}))
    spec = load_spec(str(spec_path))
    ctx = setup(spec, "quick")
    assert compile_offered(ctx.runtime) is None, compile_offered(ctx.runtime)  # `make test` installs g++, python3-dev
    run = ctx.profile.models[0]
    speed = probe_compiled(spec, run, ctx.data, ctx.runtime)
    assert isinstance(speed, Speed) and speed.train_images_per_second > 0 and speed.warmup_seconds > 0
    assert probe_compiled(spec, run, ctx.data, ctx.runtime) == speed  # cached per machine

    compiled = run.model_copy(update={"compile": True})
    output = train_fold(FoldJob(ctx.inputs, compiled, 0))
    eager = train_fold(FoldJob(ctx.inputs, run, 0))
    assert output.folder != eager.folder  # the recipe differs: so do its outputs
    manifest = read_manifest(output.folder)
    assert manifest["epochs_run"] == 2 and manifest["val_accuracy"] > 0.5
    # The checkpoint is the plain model's (no compiled wrapper in its keys): prediction rebuilds it eagerly.
    saved = load_checkpoint(output.folder / "best.pt", ctx.runtime.device)
    assert saved["state_dict"] and not [k for k in saved["state_dict"] if "_orig_mod" in k]
    assert saved["run"]["compile"] is True


@pytest.mark.slow
def test_precision_check_compares_against_fp32_and_is_cached(pipeline_env, host, tmp_path):
    from pipelines.context import setup
    from pipelines.planning.probe import cache_path, check_reduced_precision

    spec_path = _digits_spec(tmp_path, lambda s: s.update(profiles={"quick": {"folds": [0], "models": [
        {"model": "cnn3", "model_args": {"width": 16}, "batch_size": 64}]}}))
    spec = load_spec(str(spec_path))
    ctx = setup(spec, "quick")
    run = ctx.profile.models[0]
    # fp32 without channels_last against fp32 with it: the same arithmetic up to float noise, so allowed.
    result = check_reduced_precision(spec, run, ctx.data, ctx.runtime, "fp32", steps=30)
    assert result["allowed"] and abs(result["reduced_accuracy"] - result["fp32_accuracy"]) <= 0.003
    assert result["fp32_accuracy"] > 0.5  # it really trained
    cached = json.loads(cache_path(ctx.runtime).read_text())
    assert any(k.startswith("check-") for k in cached)
    assert check_reduced_precision(spec, run, ctx.data, ctx.runtime, "fp32", steps=30) == result  # from the cache


def test_bf16_autocast_model_runs_and_returns_probabilities():
    import torch

    from pipelines.machine.device import Runtime
    from pipelines.recipe.classifier import build_model
    from pipelines.stages.predict import predict_probs

    spec = load_spec("digits")
    model = build_model(ModelRun(model="cnn3", precision="bf16-cl"), spec, [0.0], [1.0], Runtime(torch.device("cpu")))
    assert model.precision.amp_dtype == torch.bfloat16
    probs = predict_probs(model, torch.randint(0, 255, (16, 1, 8, 8), dtype=torch.uint8))
    assert probs.dtype == np.float32 and np.allclose(probs.sum(1), 1, atol=1e-3)


def test_models_on_different_folds_are_weighted_on_the_rows_they_share(capsys):
    from pipelines.stages.ensemble import ModelPredictions, shared_rows

    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=10).astype(np.float32)
    two_folds = ModelPredictions("a", np.arange(10), probs, probs[:2])
    one_fold = ModelPredictions("b", np.arange(0, 10, 2), probs[::2] * 0.5 + 1 / 6, probs[:2])
    index, oof, note = shared_rows([two_folds, one_fold])
    assert index.tolist() == [0, 2, 4, 6, 8]
    assert np.allclose(oof[0], probs[::2]) and np.allclose(oof[1], probs[::2] * 0.5 + 1 / 6)
    assert note == "weights fitted on the 5 rows all models hold out (a 10 had more)"
    assert "ensemble: weights fitted on the 5 rows" in capsys.readouterr().out
    with pytest.raises(Exception, match="share no out-of-fold rows"):
        shared_rows([two_folds, ModelPredictions("c", np.array([11, 12]), probs[:2], probs[:2])])


def test_plan_naming_an_unknown_model_is_refused_before_work(tmp_path, capsys):
    plan = plan_of(planned("a", 3, [0]))
    plan.runs[0].run = plan.runs[0].run.model_copy(update={"model": "no_such_net"})
    path = tmp_path / "plan.json"
    path.write_text(plan.model_dump_json())
    assert pipelines_main(["submit", "--comp", "digits", f"--plan={path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: PLAN={path}: key 'runs.0.run.model': ") and "no_such_net" in err, err


@pytest.mark.parametrize("fold", [-1, 5])
def test_plan_naming_a_fold_that_does_not_exist_is_refused_before_work(pipeline_env, tmp_path, capsys, fold):
    path = tmp_path / "plan.json"
    path.write_text(plan_of(planned("a", 3, [0, fold])).model_dump_json())
    assert pipelines_main(["submit", "--comp", "digits", f"--plan={path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: PLAN={path}: field 'runs.0.folds': fold {fold} does not exist; folds are numbered 0..4 "
                   "(folds.n_splits is 5) in competition/digits.yaml"), err
    assert not (pipeline_env / "digits").exists(), "work started before the check"


@pytest.mark.slow
def test_two_budget_runs_at_once_make_one_plan_and_train_once(pipeline_env, host, tmp_path):
    import os
    import subprocess
    import sys

    from competition.paths import REPO_ROOT

    def one_candidate(spec):
        spec["pool"]["candidates"] = [{**spec["pool"]["candidates"][0], "epochs": 3, "min_epochs": 1}]
        spec["pool"]["tta"] = ["identity"]

    spec_path = _digits_spec(tmp_path, one_candidate)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "KPIPE_SUBMISSIONS": str(tmp_path / "submissions"),
           "DRY_RUN": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "pipelines", "submit", "--comp", str(spec_path), "--budget=60s"]
    runs = [subprocess.Popen(command, env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    outputs = [run.communicate(timeout=600) for run in runs]
    for run, (out, err) in zip(runs, outputs):
        assert run.returncode == 0, err[-3000:]
    assert sum("plan: probing" in out for out, _ in outputs) == 1
    assert sum("reusing the plan of record" in out for out, _ in outputs) == 1
    assert sum(" epoch 1/" in out for out, _ in outputs) == 1, "both processes trained the same fold"
    assert len(list((pipeline_env / "digits" / "plans").glob("*.json"))) == 1


@pytest.mark.parametrize("text", ["abc", "", "1", "60,99999"])
def test_bench_curve_bad_seconds_is_one_line(text, capsys):
    from pipelines.tools.bench_curve import main

    assert main(["--comp", "digits", "--seconds", text]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"SECONDS={text}:" in err and "e.g. 60,120" in err


@pytest.mark.slow
def test_accuracy_after_n_seconds_trains_each_candidate_for_about_that_long(pipeline_env, host):
    from competition.paths import competition_root
    from pipelines.stages.inputs import load_inputs
    from pipelines.tools.bench_curve import accuracy_by_time

    from dataclasses import replace

    inputs = load_inputs(load_spec("digits"))
    two = inputs.spec.pool.model_copy(update={"candidates": inputs.spec.pool.candidates[:2]})  # to keep CI short
    inputs = replace(inputs, spec=inputs.spec.model_copy(update={"pool": two}))
    rows = accuracy_by_time(inputs, [4.0])
    assert [r["candidate"] for r in rows] == ["cnn3", "lenet"]
    for row in rows:
        assert row["epochs"] >= 1 and 0 < row["row_share"] <= 1
        assert 0 < row["train_seconds"] < 3 * 4.0, row  # about the asked time (digits' epochs are tiny)
        assert row["val_accuracy"] > 0.5, row  # it really trained
    assert not (competition_root("digits") / "train").exists()  # scratch runs: nothing joins the real outputs
