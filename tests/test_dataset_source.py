"""`source: dataset`: a labelled Kaggle dataset as the data, its held-out rows scored locally in place of
a leaderboard, nothing uploaded."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import yaml
from PIL import Image
from pydantic import ValidationError

from competition.paths import submissions_root
from competition.spec import CompetitionSpec
from pipelines.__main__ import main as pipelines_main
from pipelines.stages.readers import read_competition


def _spec(layout: dict, **more) -> CompetitionSpec:
    return CompetitionSpec.model_validate({
        "name": "toy", "title": "toy", "kaggle_slug": "someone/toy-data", "host": "local", "source": "dataset",
        "layout": layout, "classes": "auto", "image": {"height": 8, "width": 8, "channels": 1}, "metric": "accuracy",
        **more})


def test_a_dataset_is_named_owner_slash_name_and_a_competition_is_not():
    assert _spec({"kind": "pixel_csv"}).source == "dataset"
    with pytest.raises(ValidationError, match="a dataset is named owner/name"):
        _spec({"kind": "pixel_csv"}, kaggle_slug="toy-data")
    with pytest.raises(ValidationError, match="names a dataset; set `source: dataset`"):
        _spec({"kind": "pixel_csv"}, source="competition")


def test_without_a_labelled_test_split_a_seeded_stratified_fraction_is_held_out(tmp_path):
    for i in range(20):
        (tmp_path / "train" / ("ab"[i % 2])).mkdir(parents=True, exist_ok=True)
        Image.new("L", (8, 8), 10 * i).save(tmp_path / "train" / "ab"[i % 2] / f"img{i}.png")
    spec = _spec({"kind": "class_folders"}, holdout={"fraction": 0.2, "seed": 1})
    data = read_competition(spec, tmp_path)
    assert len(data.train_ids) == 16 and len(data.test_ids) == 4 and not set(data.train_ids) & set(data.test_ids)
    assert sorted(data.test_labels.tolist()) == [0, 0, 1, 1]  # stratified
    assert data.test_images[0, 0, 0, 0] == 10 * int(data.test_ids[0][3:])  # each held-out row keeps its image
    again = read_competition(spec, tmp_path)
    assert again.test_ids == data.test_ids  # seeded


def _pixel_rows(path, images, labels=None):
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(([] if labels is None else ["label"]) + [f"pixel{j}" for j in range(64)])
        for n, image in enumerate(images):
            writer.writerow(([] if labels is None else [int(labels[n])]) + image.reshape(-1).tolist())


def test_a_labelled_test_csv_is_the_held_out_split(tmp_path):
    rng = np.random.default_rng(0)
    _pixel_rows(tmp_path / "train.csv", rng.integers(0, 255, (12, 8, 8)), np.arange(12) % 3)
    _pixel_rows(tmp_path / "test.csv", rng.integers(0, 255, (5, 8, 8)), [2, 1, 0, 2, 1])
    data = read_competition(_spec({"kind": "pixel_csv"}), tmp_path)
    assert data.classes == ["0", "1", "2"] and len(data.train_ids) == 12
    assert data.test_ids == [f"test-{i}" for i in range(5)] and data.test_labels.tolist() == [2, 1, 0, 2, 1]


@pytest.mark.slow
def test_make_submit_on_a_dataset_scores_its_held_out_rows_locally_and_uploads_nothing(
        pipeline_env, host, run_kaggle, tmp_path, capsys, monkeypatch):
    from sklearn.datasets import load_digits

    monkeypatch.setenv("KPIPE_SUBMISSIONS", str(tmp_path / "submissions"))
    digits = load_digits()
    images = np.clip(digits.images * 16, 0, 255).astype(np.uint8)
    owner = host.store.credentials()["username"]
    folder = tmp_path / "ds"
    folder.mkdir()
    _pixel_rows(folder / "train.csv", images[:1400], digits.target[:1400])
    _pixel_rows(folder / "test.csv", images[1400:], digits.target[1400:])
    (folder / "dataset-metadata.json").write_text(json.dumps(
        {"title": "Digits as pixels", "id": f"{owner}/digits-pixels", "licenses": [{"name": "CC0-1.0"}]}))
    created = run_kaggle("datasets", "create", "-p", str(folder))
    assert "is being created" in created.stdout, created.stdout + created.stderr
    spec = {"name": "digits-pixels", "title": "Digits as pixels (a dataset)", "kaggle_slug": f"{owner}/digits-pixels",
            "host": "local", "source": "dataset", "layout": {"kind": "pixel_csv"}, "classes": "auto",
            "image": {"height": 8, "width": 8, "channels": 1}, "metric": "accuracy", "flips": {"hflip": False},
            "folds": {"n_splits": 3, "seed": 0, "duplicates": "ignore"},
            "profiles": {"quick": {"folds": [0], "tta": ["identity"], "models": [
                {"model": "cnn3", "epochs": 4, "batch_size": 64, "optimizer": {"name": "sgd", "lr": 0.05}}]}}}
    path = tmp_path / "digits-pixels.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert pipelines_main(["submit", "--comp", str(path), "--profile", "quick"]) == 0
    out = capsys.readouterr().out
    assert "is a Kaggle dataset: nothing uploaded; accuracy" in out and "397 held-out rows" in out
    with open(submissions_root() / "digits-pixels" / "log.csv", newline="") as fh:
        [row] = list(csv.DictReader(fh))
    assert row["status"] == "LOCAL" and float(row["public_score"]) > 0.8 and row["private_score"] == "" and not row["ref"]
