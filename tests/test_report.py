"""The run report: rendered for a small digits run in headless Chromium, with every table and image in place."""
from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess

import numpy as np
import pytest
import yaml
from PIL import Image

from pipelines.__main__ import main as pipelines_main
from tests.test_train_submit import TINY_RUN, write_digits_variant

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--virtual-time-budget=5000"]


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("Debian's chromium is not installed (`make test` installs it); the report is not rendered")
    return path


@pytest.mark.slow
def test_report_renders_with_all_tables_and_images(pipeline_env, host, tmp_path, monkeypatch):
    monkeypatch.setenv("KPIPE_SUBMISSIONS", str(tmp_path / "submissions"))
    spec_path = write_digits_variant(tmp_path, [TINY_RUN, {**TINY_RUN, "model": "fastcnn", "alias": "fast"}])
    # A small study first, so that the report has a study section too.
    spec = yaml.safe_load(spec_path.read_text())
    spec["tuning"] = {"folds": [0], "epochs": 1, "subsample": 0.3, "pruner": {"name": "none"},
                      "search_space": {"optimizer.lr": {"type": "float", "low": 0.01, "high": 0.1, "log": True}}}
    spec_path.write_text(yaml.safe_dump(spec))
    assert pipelines_main(["tune", "--comp", str(spec_path), "--model", "cnn3", "--trials", "2"]) == 0
    assert pipelines_main(["submit", "--comp", str(spec_path)]) == 0
    report = pipeline_env / "digits" / "report.html"
    page = report.read_text()
    for table in ("models-table", "ensemble-table", "confused-table", "per-class-table", "submissions-table"):
        assert f'id="{table}"' in page, table
    for phrase in ("time per epoch (s)", "OOF accuracy, with TTA (%)", "TTA gain (points)", "ensemble weight",
                   "public score", "Most confused pairs", 'alt="highest-loss out-of-fold images"',
                   'alt="augmentation preview"', 'alt="learning curves of every model"', 'alt="CV against leaderboard"',
                   'id="final-choice"', 'alt="Grad-CAM overlays"', 'alt="activation maximisation of filters"',
                   'alt="activation maximisation of classes"'):
        assert phrase in page, phrase
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    # comparison bars, overlaid and two per-model learning curves, confusion matrix, the gallery of the
    # worst OOF images, Grad-CAM, filters' and classes' activation maximisation, the augmentation preview,
    # CV against the leaderboard, the study's two plots
    assert len(images) == 13
    assert "Optuna study &#x27;digits-cnn3&#x27;: optimization history" in page
    for encoded in images:
        pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(encoded))).convert("L"), dtype=np.float32)
        assert pixels.std() > 5, "an empty plot"

    chromium = _chromium()
    dom = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr",
                          "--v=0", "--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-1000:]
    assert not [line for line in dom.stderr.splitlines() if "CONSOLE" in line], dom.stderr[-2000:]  # no console errors
    assert f'data-images-ok="{len(images)}/{len(images)}"' in dom.stdout, "an image did not load in the browser"
    screenshot = tmp_path / "report.png"
    shot = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile2'}",
                           f"--screenshot={screenshot}", "--window-size=1200,2400", report.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert shot.returncode == 0 and screenshot.is_file(), shot.stderr[-1000:]
    rendered = np.asarray(Image.open(screenshot).convert("L"), dtype=np.float32)
    assert rendered.shape[1] == 1200 and rendered.std() > 10  # text, tables and plots, not a blank page

    # `make report` renders the same page from the cached outputs alone.
    report.unlink()
    assert pipelines_main(["report", "--comp", str(spec_path)]) == 0
    assert report.is_file()


def test_report_before_training_says_what_to_run(pipeline_env, tmp_path, capsys):
    spec_path = write_digits_variant(tmp_path, [TINY_RUN])
    assert pipelines_main(["report", "--comp", str(spec_path)]) == 2
    assert "cnn3 fold 0 is not trained yet; run `make submit COMP=digits`" in capsys.readouterr().err
