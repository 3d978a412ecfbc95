"""The pre-upload validator refuses every kind of malformed submission, naming the file, row and problem."""
from __future__ import annotations

import pytest

from pipelines.submit import SubmissionInvalid, validate_submission

CLASSES = ["0", "1", "2"]
SAMPLE_ROWS = [["id", "label"], ["a", "0"], ["b", "0"], ["c", "0"]]


def _write(path, rows):
    path.write_text("".join(",".join(r) + "\n" for r in rows))
    return path


@pytest.fixture
def sample(tmp_path):
    return _write(tmp_path / "sample_submission.csv", SAMPLE_ROWS)


def test_a_good_submission_passes(tmp_path, sample):
    good = _write(tmp_path / "good.csv", [["id", "label"], ["a", "2"], ["b", "1"], ["c", "0"]])
    assert validate_submission(good, sample, CLASSES) == 3


@pytest.mark.parametrize("rows, message", [
    ([["id", "target"], ["a", "2"], ["b", "1"], ["c", "0"]], "header id,target differs from the sample's id,label"),
    ([["id", "label"], ["a", "2"], ["b", "1"]], "2 rows, the sample submission has 3"),
    ([["id", "label"], ["a", "2"], ["b", "1"], ["c", "0"], ["d", "0"]], "4 rows, the sample submission has 3"),
    ([["id", "label"], ["b", "2"], ["a", "1"], ["c", "0"]], "row 2: id 'b' where the sample submission has 'a'"),
    ([["id", "label"], ["a", "2"], ["a", "1"], ["c", "0"]], "row 3: duplicate id 'a'"),
    ([["id", "label"], ["a", "2"], ["x", "1"], ["c", "0"]], "row 3: id 'x' where the sample submission has 'b'"),
    ([["id", "label"], ["a", "7"], ["b", "1"], ["c", "0"]], "row 2: label '7' is not one of the competition's classes"),
    ([["id", "label"], ["a", ""], ["b", "1"], ["c", "0"]], "row 2: empty label for id 'a'"),
    ([["id", "label"], ["a", "1", "extra"], ["b", "1"], ["c", "0"]], "row 2: 3 fields, expected 2"),
    ([], "empty file"),
])
def test_malformed_submission_is_refused(tmp_path, sample, rows, message):
    bad = _write(tmp_path / "bad.csv", rows)
    with pytest.raises(SubmissionInvalid) as info:
        validate_submission(bad, sample, CLASSES)
    assert message in str(info.value) and str(bad) in str(info.value)
