"""Leak-aware folds: near-duplicate images found by perceptual hash (planted ones, within train and
between train and test), and groups (duplicates, or the spec's group column) kept in one fold."""
from __future__ import annotations

import numpy as np
import pytest
import yaml

from pipelines.stages.duplicates import find_duplicates, groups_from_pairs, near_pairs, perceptual_hashes
from pipelines.stages.prepare import assign_folds


def _images(rng, count: int) -> np.ndarray:
    """Smooth random images (8x8 noise blown up to 32x32), so that each has its own low frequencies."""
    from PIL import Image

    small = rng.integers(0, 256, (count, 8, 8), dtype=np.uint8)
    return np.stack([np.asarray(Image.fromarray(s).resize((32, 32), Image.BILINEAR)) for s in small])[..., None]


def _near_copy(rng, image: np.ndarray) -> np.ndarray:
    """The same picture re-encoded: a little noise and a brightness shift."""
    return np.clip(image.astype(int) + rng.integers(-6, 7, image.shape) + 10, 0, 255).astype(np.uint8)


def test_planted_near_duplicates_are_found_within_train_and_against_test():
    rng = np.random.default_rng(0)
    train = _images(rng, 300)
    planted = [(i, 150 + i) for i in range(0, 40, 4)]  # ten pairs
    for original, copy in planted:
        train[copy] = _near_copy(rng, train[original])
    test = _images(rng, 50)
    leaked = [(7, 3), (21, 30)]  # (train row, test row)
    for row, test_row in leaked:
        test[test_row] = _near_copy(rng, train[row])
    report = find_duplicates(train, test)
    found = {(i, j) for i, j, _ in report.train_pairs}
    assert set(planted) <= found and len(found) <= len(planted) + 2, found
    assert set(leaked) <= {(i, j) for i, j, _ in report.train_test_pairs}
    assert report.summary()["train_pairs"] == len(report.train_pairs)


@pytest.mark.parametrize("shape", [(28, 28, 1), (64, 64, 3), (20, 45, 3), (32, 32, 1), (160, 120, 1)])
def test_batched_hashes_are_imagehash_phash_bit_for_bit(shape):
    """The batched hash reproduces Pillow's grey conversion and LANCZOS resampling in fixed point: the same
    bits as imagehash image by image, on real Fashion-MNIST pixels (tiled and tinted to the shape)."""
    import imagehash
    from PIL import Image

    from competition.host.builders import FASHION_MNIST_DIR, read_idx

    fashion = read_idx(FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz")[:200]
    height, width, channels = shape
    tiled = np.tile(fashion, (1, height // 28 + 1, width // 28 + 1))[:, :height, :width]
    tint = np.array([1.0, 0.8, 0.6][:channels])
    images = np.clip(tiled[..., None] * tint + np.arange(channels) * 20, 0, 255).astype(np.uint8)
    expected = [int("".join("1" if b else "0" for b in imagehash.phash(Image.fromarray(i[..., 0] if channels == 1 else i))
                            .hash.flatten()), 2) for i in images]
    assert perceptual_hashes(images, "test").tolist() == expected


def test_hash_distance_is_counted_in_bits():
    hashes = np.array([0b1011, 0b1000, 0xFFFF_0000_0000_0000], dtype=np.uint64)
    assert near_pairs(hashes, max_distance=2) == [(0, 1, 2)]
    assert perceptual_hashes(np.zeros((2, 32, 32, 1), dtype=np.uint8), "blank").tolist()[0] == 0


def test_groups_are_joined_through_pairs_and_never_split_across_folds():
    groups = groups_from_pairs(6, [(0, 1, 0), (1, 4, 2), (2, 3, 1)])
    assert groups[0] == groups[1] == groups[4] and groups[2] == groups[3] and len(set(groups.tolist())) == 3
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 600)
    row_groups = np.arange(600) // 4  # 150 groups of four rows
    fold = assign_folds(labels, 5, 42, row_groups)
    assert all(len(set(fold[row_groups == g].tolist())) == 1 for g in range(150))
    assert sorted(np.bincount(fold).tolist())[0] > 80  # still roughly even
    plain = assign_folds(labels, 5, 42, np.arange(600))  # every row its own group: plain stratified k-fold
    assert (plain == assign_folds(labels, 5, 42)).all()


@pytest.mark.slow
def test_a_group_column_keeps_its_groups_in_one_fold(pipeline_env, tmp_path):
    from competition.spec import SPEC_DIR, load_spec
    from pipelines.stages.inputs import load_inputs

    spec = yaml.safe_load((SPEC_DIR / "digits.yaml").read_text())
    spec["folds"]["group_column"] = "label"  # digits' train.csv has no other column: each class is a group
    path = tmp_path / "digits-groups.yaml"
    path.write_text(yaml.safe_dump(spec))
    inputs = load_inputs(load_spec(str(path)))
    folds, data = inputs.folds, inputs.data
    labels, fold = data.labels_host(), data.fold_of_row
    assert all(len(set(fold[labels == c].tolist())) == 1 for c in range(10))
    manifest = (folds.folder / "manifest.json").read_text()
    assert '"group_column"' in manifest and '"train_pairs"' in manifest


def test_a_group_column_on_a_layout_without_train_csv_is_refused(tmp_path):
    from competition.errors import SpecError
    from competition.spec import SPEC_DIR, load_spec

    spec = yaml.safe_load((SPEC_DIR / "tiny-image-challenge.yaml").read_text())
    spec["folds"]["group_column"] = "patient"
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(SpecError, match="folds.group_column: this layout has no train.csv"):
        load_spec(str(path))


def test_mostly_single_rows_get_exactly_stratified_folds_with_their_groups_kept():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, 2000)
    groups = np.arange(2000)
    for first in range(0, 60, 3):  # 20 near-duplicate groups of three rows among 1,940 single ones
        groups[first + 1] = groups[first + 2] = first
    fold = assign_folds(labels, 5, 42, groups)
    assert all(len(set(fold[groups == g].tolist())) == 1 for g in range(0, 60, 3))
    for label in range(4):  # every class within a row of its even share in every fold
        per_fold = np.bincount(fold[labels == label], minlength=5)
        assert per_fold.max() - per_fold.min() <= 1, (label, per_fold)
    assert np.array_equal(fold, assign_folds(labels, 5, 42, groups))  # the seed fixes them
    assert not np.array_equal(fold, assign_folds(labels, 5, 7, groups))
