"""Pseudo-labelling: a student run learns from test images its teacher's model of the same fold is sure
of. The recipe's checks, the choice of rows, the planner and the runner from fakes; then real training
on digits through the local host."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from competition.errors import SpecError
from competition.recipe import Candidate, ModelRun, Profile, PseudoLabels
from competition.spec import SPEC_DIR, load_spec
from pipelines.__main__ import main as pipelines_main
from pipelines.execution.runner import run_units, units_of
from pipelines.planning.plan import CandidateCost, ImageCounts, candidate_cost, choose
from pipelines.planning.probe import Speed
from pipelines.planning.records import PlannedRun, PlanRecord
from pipelines.stages.artifacts import read_manifest
from pipelines.stages.predict import FoldOutput
from pipelines.stages.pseudo import choose_rows

STUDENT = {"teacher": "teacher", "threshold": 0.9, "max_share": 0.5}


def _profile(**student) -> Profile:
    return Profile(models=[ModelRun(model="cnn3", alias="teacher", epochs=3),
                           ModelRun(model="cnn3", alias="student", seed=7, pseudo_labels={**STUDENT, **student})])


# --- the recipe -----------------------------------------------------------------------------------------


def test_a_student_is_keyed_by_its_teacher_as_listed():
    profile = _profile()
    teacher, student = profile.models
    assert student.pseudo_labels.teacher_run == teacher
    longer = Profile(models=[teacher.model_copy(update={"epochs": 4}), student])
    assert longer.models[1].key_dump() != student.key_dump()  # a retrained teacher: a retrained student
    assert ModelRun(model="cnn3").key_dump() == ModelRun.model_validate(ModelRun(model="cnn3").key_dump()).key_dump()
    assert "pseudo_labels" not in ModelRun(model="cnn3").key_dump() and "seed" not in ModelRun(model="cnn3").key_dump()
    # The teacher inside is keyed as its own outputs are: an option added later, unset, changes neither.
    assert student.key_dump()["pseudo_labels"]["teacher_run"] == teacher.key_dump()


@pytest.mark.parametrize("models, message", [
    ([{"model": "cnn3", "alias": "student", "pseudo_labels": {"teacher": "teacher"}}, {"model": "cnn3", "alias": "teacher"}],
     r"student's pseudo_labels.teacher 'teacher' is not a run listed before it; list the teacher first"),
    ([{"model": "cnn3", "alias": "a"}, {"model": "cnn3", "alias": "b", "pseudo_labels": {"teacher": "a"}},
      {"model": "cnn3", "alias": "c", "pseudo_labels": {"teacher": "b"}}], r"c's teacher 'b' learns from pseudo-labels itself"),
    ([{"model": "cnn3", "pseudo_labels": {"teacher": "cnn3"}}], r"'cnn3' cannot teach itself"),
    ([{"model": "cnn3"}, {"model": "lenet", "pseudo_labels": {"teacher": "cnn3", "threshold": 0.2}}],
     r"pseudo_labels.threshold: 0.2 is not in \[0.5, 1\); give one there, or `auto`"),
])
def test_bad_pseudo_label_recipes_are_one_line_errors(tmp_path, models, message):
    spec = yaml.safe_load((SPEC_DIR / "digits.yaml").read_text())
    spec["profiles"] = {"quick": {"models": models}}
    path = tmp_path / "digits-bad.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(SpecError, match=message) as caught:
        load_spec(str(path))
    assert "\n" not in str(caught.value)


# --- which rows -----------------------------------------------------------------------------------------


def _teacher_folder(folder: Path, test_probs: np.ndarray, oof_probs: np.ndarray, oof_index: np.ndarray) -> FoldOutput:
    folder.mkdir(parents=True)
    np.save(folder / "test_probs.npy", test_probs)
    np.save(folder / "oof_probs.npy", oof_probs)
    np.save(folder / "oof_index.npy", oof_index)
    (folder / "manifest.json").write_text(json.dumps({"digest": "abc"}))
    return FoldOutput(folder)


def test_the_most_confident_test_images_are_chosen_up_to_the_share(tmp_path):
    test_probs = np.array([[0.97, 0.03], [0.5, 0.5], [0.05, 0.95], [0.01, 0.99], [0.92, 0.08]], dtype=np.float32)
    oof_probs = np.array([[0.99, 0.01], [0.95, 0.05], [0.3, 0.7], [0.02, 0.98]], dtype=np.float32)
    labels = np.array([0, 1, 1, 1, 0, 0])  # the teacher's held-out rows are 0, 1, 2, 3: it is wrong on row 1
    teacher = _teacher_folder(tmp_path / "t" / "fold0", test_probs, oof_probs, np.arange(4))
    rows = choose_rows(PseudoLabels(teacher="t", threshold=0.9, max_share=0.5), teacher, labels, train_rows=6)
    # Four test images reach 0.9; the share allows 3: the most confident (rows 3, 0, 2), in row order.
    assert rows.test_rows.tolist() == [0, 2, 3] and rows.labels.tolist() == [0, 1, 1]
    s = rows.summary
    assert (s["rows"], s["eligible"], s["test_images"], s["share_of_training_rows"]) == (3, 4, 5, 0.5)
    assert s["teacher_held_out_above_threshold"] == 0.75
    assert s["teacher_accuracy_above_threshold"] == pytest.approx(2 / 3, abs=1e-4)
    none = choose_rows(PseudoLabels(teacher="t", threshold=0.999), teacher, labels, train_rows=6)
    assert none.summary["rows"] == 0 and none.summary["teacher_accuracy_above_threshold"] is None


def test_a_near_copy_of_a_held_out_row_is_not_pseudo_labelled():
    from pipelines.stages.pseudo import PseudoRows, without_held_out_copies

    rng = np.random.default_rng(0)
    held_out = rng.integers(0, 256, (40, 28, 28, 1), dtype=np.uint8)
    chosen = rng.integers(0, 256, (5, 28, 28, 1), dtype=np.uint8)
    chosen[3] = np.clip(held_out[17].astype(int) + 3, 0, 255)  # the same image, a little brighter
    rows = PseudoRows(np.array([2, 4, 6, 8, 9]), np.array([0, 1, 2, 3, 4]), {"rows": 5})
    kept = without_held_out_copies(rows, held_out, chosen)
    assert kept.test_rows.tolist() == [2, 4, 6, 9] and kept.labels.tolist() == [0, 1, 2, 4]
    assert kept.summary["rows"] == 4 and kept.summary["held_out_copies_dropped"] == 1


def test_auto_threshold_is_where_the_teachers_held_out_rows_are_right_often_enough(tmp_path):
    from pipelines.stages.pseudo import auto_threshold

    rng = np.random.default_rng(1)
    confidence = rng.uniform(0.4, 0.8, 200)  # label smoothing: no top probability near 1
    right = rng.uniform(size=200) < confidence + 0.2  # the surer, the more often right
    threshold = auto_threshold(confidence, right, precision=0.95)
    above = confidence >= threshold
    assert right[above].mean() >= 0.95 and above.sum() >= 20
    assert right[confidence >= np.sort(confidence)[::-1][above.sum()]].mean() < 0.95  # one row lower fails
    assert auto_threshold(confidence, np.zeros(200, bool), 0.95) == 1.0  # never right enough: nothing passes
    # Three classes, class 0 the most probable on every held-out row: a row is right where its label is 0.
    oof = np.stack([confidence, (1 - confidence) / 2, (1 - confidence) / 2], 1).astype(np.float32)
    test = np.array([[threshold + 0.01, 0, 0], [threshold - 0.01, 0, 0]], np.float32)
    test[:, 1] = test[:, 2] = (1 - test[:, 0]) / 2
    teacher = _teacher_folder(tmp_path / "t" / "fold0", test, oof, np.arange(200))
    rows = choose_rows(PseudoLabels(teacher="t"), teacher, np.where(right, 0, 1), train_rows=100)
    assert rows.summary["threshold"] == pytest.approx(threshold) and rows.summary["threshold_rule"].startswith("auto")
    assert rows.test_rows.tolist() == [0] and rows.summary["teacher_accuracy_above_threshold"] >= 0.95


# --- the planner and the runner ---------------------------------------------------------------------------


def _cost(name: str, family: str, pseudo: dict | None = None) -> CandidateCost:
    candidate = Candidate(model="cnn3", alias=name, family=family, epochs=10, min_epochs=3, pseudo_labels=pseudo)
    return CandidateCost(candidate, "fp32", "test", 10.0, 5.0, 2.0)


def test_the_planner_takes_a_student_only_beside_its_teacher():
    student = _cost("student", "cnn-pl", {"teacher": "teacher"})
    both = choose([_cost("teacher", "cnn"), student], 250, 5, 3, [1], 5000, min_share=1.0)
    assert [c.candidate.name for c, _, _ in both.runs] == ["teacher", "student"]
    # The teacher does not fit beside the first model: nor does its student, with a note saying why.
    alone = choose([_cost("other", "resnet"), _cost("teacher", "cnn"), student], 150, 5, 3, [1], 5000, min_share=1.0)
    assert [c.candidate.name for c, _, _ in alone.runs] == ["other"]
    assert any("student left out: its pseudo-label teacher teacher is not in the plan" in n for n in alone.notes)
    # Short of time, a student never trains alone.
    short = choose([student, _cost("teacher", "cnn")], 40, 5, 3, [1], 60)
    assert [c.candidate.name for c, _, _ in short.runs] == ["teacher"]


def test_a_student_is_planned_with_its_extra_rows():
    spec = load_spec("digits")
    plain = Candidate(model="cnn3", family="cnn", epochs=10)
    student = Candidate(model="cnn3", alias="s", family="cnn", epochs=10, pseudo_labels={"teacher": "cnn3", "max_share": 0.5})
    counts, speed = ImageCounts(train=1000, test=300), Speed(1000.0, 5000.0)
    a, b = (candidate_cost(spec, c, "fp32", "", speed, counts) for c in (plain, student))
    # 800 training rows per fold; the student adds up to min(400, 300 test images).
    assert b.seconds_training_per_epoch / a.seconds_training_per_epoch == pytest.approx((1100 // 128) / (800 // 128))


class SlotWorkers:
    """Two units at once on a fake clock, each taking its planned time; records when each started."""

    clock = None
    slots = 2

    def __init__(self):
        self.t, self.ends, self.started = 0.0, {}, {}

    def submit(self, unit, limit):
        self.started[unit.what] = self.t
        self.ends[unit.what] = (self.t + unit.planned.seconds_per_fold, unit)
        return unit.what

    def next_done(self, handles):
        handle = min(handles, key=lambda h: self.ends[h][0])
        end, unit = self.ends.pop(handle)
        self.t = max(self.t, end)
        return handle, unit.what, unit.planned.seconds_per_fold


def test_a_student_fold_waits_for_its_teachers_fold_on_parallel_workers():
    profile = _profile()
    runs = [PlannedRun(run=run, family=run.name, folds=[0, 1], seconds_per_epoch=10, seconds_per_fold=30 + 10 * i,
                       tta_seconds_per_fold=0) for i, run in enumerate(profile.models)]
    plan = PlanRecord(competition="digits", request="r", budget_seconds=1000, device="cpu", machine="m",
                      machine_key="k", created="now", runs=runs, tta=["identity"], ensemble="hill_climb",
                      reserve_seconds=10, setup_seconds=0)
    workers = SlotWorkers()
    trained = run_units(units_of(plan), workers)
    assert workers.started["student fold 0"] >= 30  # not beside teacher fold 0, which ends at 30
    assert workers.started["student fold 1"] >= workers.started["teacher fold 1"] + 30
    assert sorted(trained) == ["student", "teacher"] and all(len(v) == 2 for v in trained.values())


# --- real training on digits -------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_student_learns_from_its_teachers_test_predictions_and_stays_honest(pipeline_env, host, tmp_path, capsys):
    spec = yaml.safe_load((SPEC_DIR / "digits.yaml").read_text())
    recipe = {"model": "cnn3", "model_args": {"width": 16}, "epochs": 3, "batch_size": 64,
              "optimizer": {"name": "sgd", "lr": 0.05}, "augment": {"policy": "light", "shift": 1}}
    spec["profiles"] = {"quick": {"folds": [0, 1], "tta": ["identity"], "models": [
        {**recipe, "alias": "teacher"},
        {**recipe, "alias": "student", "seed": 1, "pseudo_labels": {"teacher": "teacher", "precision": 0.97}}]}}
    path = tmp_path / "digits-pseudo.yaml"
    path.write_text(yaml.safe_dump(spec))

    # The student cannot train before its teacher: one line naming what to run.
    assert pipelines_main(["train", "--comp", str(path), "--profile", "quick", "--model", "student", "--fold", "0"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]  # (and the download's bar)
    assert len(errors) == 1 and "learns from teacher's fold-0 predictions, which are not trained yet" in errors[0], errors

    assert pipelines_main(["submit", "--comp", str(path), "--profile", "quick", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "test images pseudo-labelled by teacher at top probability >= " in out, out[-3000:]
    assert "(auto: the teacher's held-out rows at least 0.97 right)" in out
    train_root = pipeline_env / "digits" / "train"
    for fold in (0, 1):
        [teacher] = train_root.glob(f"teacher-*/fold{fold}")
        [student] = train_root.glob(f"student-*/fold{fold}")
        pseudo = read_manifest(student)["pseudo_labels"]
        assert pseudo["rows"] > 0 and pseudo["teacher_output"].endswith(f"fold{fold}")
        assert pseudo["teacher_digest"] == read_manifest(teacher)["digest"]  # its own fold's teacher, no other
        assert pseudo["teacher_accuracy_above_threshold"] >= 0.97  # as asked, on the teacher's own held-out rows
        # The held-out rows are the fold's, as the teacher's: no held-out row trained the student.
        assert np.array_equal(np.load(student / "oof_index.npy"), np.load(teacher / "oof_index.npy"))
        assert read_manifest(student)["val_accuracy"] > 0.5
    report = (pipeline_env / "digits" / "report.html").read_text()
    assert 'id="pseudo-labels-table"' in report
