"""prepare: raw competition files -> canonical cached arrays, and a seeded stratified k-fold split.

Outputs (each folder keyed by a hash of its config and inputs, see artifacts.py):
    <data>/<comp>/prepared/<key>/  train_images.npy (uint8 N×H×W×C), train_labels.npy (class indices),
                                   train.csv (id,label), test_images.npy, test_ids.csv, manifest.json,
                                   and for `source: dataset` test_labels.npy (the held-out rows' classes)
    <data>/<comp>/folds/<key>/     folds.csv (id,label,fold), manifest.json
"""
from __future__ import annotations

import csv
import hashlib
import itertools
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from competition import atomic
from competition.errors import DataError
from competition.paths import competition_root
from competition.spec import CompetitionSpec
from pipelines.machine.memory import memory_mapped
from pipelines.stages.artifacts import atomic_output, build_once, output_key, read_manifest
from pipelines.stages.download import raw_dir, raw_is_complete
from pipelines.stages.readers import CanonicalData, label_counts, label_text, read_competition


@dataclass(frozen=True)
class Prepared:
    """Where the canonical arrays of one competition live; load them with `load()`."""

    folder: Path
    key: str

    def load(self, mmap: bool = True) -> CanonicalData:
        mode = "r" if mmap else None
        with open(self.folder / "train.csv", newline="") as fh:
            train_ids = [row["id"] for row in csv.DictReader(fh)]
        with open(self.folder / "test_ids.csv", newline="") as fh:
            test_ids = [row["id"] for row in csv.DictReader(fh)]
        return CanonicalData(
            train_images=np.load(self.folder / "train_images.npy", mmap_mode=mode),
            train_labels=np.load(self.folder / "train_labels.npy"),
            train_ids=train_ids,
            test_images=np.load(self.folder / "test_images.npy", mmap_mode=mode),
            test_ids=test_ids,
            classes=self.classes(),
            test_labels=np.load(self.folder / "test_labels.npy") if (self.folder / "test_labels.npy").is_file() else None,
        )

    def classes(self) -> list[str]:
        """The class labels, in the order of the label indices (the spec's, or those `auto` found)."""
        return list(read_manifest(self.folder)["classes"])


def _write_rows(path: Path, header: list[str], rows) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


DIGEST_CACHE = ".content-digest.json"  # in raw/: the digest, and the size and mtime of every file it read


def content_digest(folder: Path, names: list[str]) -> str:
    """A hash of the files' bytes (not their names and sizes only): a file edited in place changes it.
    Computed once: while every file keeps the size and modification time it had then (kept beside the
    files, in DIGEST_CACHE), a command reuses it instead of reading gigabytes again."""
    stats = {name: [status.st_size, status.st_mtime_ns]
             for name, status in ((name, (folder / name).stat()) for name in sorted(names))}
    cache = folder / DIGEST_CACHE
    try:
        cached = json.loads(cache.read_text())
        if cached.get("files") == stats and isinstance(cached.get("digest"), str):
            return cached["digest"]
    except (OSError, ValueError, AttributeError):
        pass  # no cache yet, or one from an interrupted write: read the bytes
    sha = hashlib.sha256()
    for name in sorted(names):
        sha.update(name.encode() + b"\0")
        with open(folder / name, "rb") as fh:
            while chunk := fh.read(1 << 20):
                sha.update(chunk)
        sha.update(b"\0")
    digest = sha.hexdigest()[:16]
    try:
        atomic.write_json(cache, {"digest": digest, "files": stats})
    except OSError:
        pass  # a read-only data folder: the next command hashes again, nothing else is lost
    return digest


def prepare(spec: CompetitionSpec, force: bool = False) -> Prepared:
    raw = raw_dir(spec)
    if not raw_is_complete(raw):
        raise DataError(f"{raw}: no complete download; run `python -m pipelines download --comp {spec.name}` first")
    config = {"data": spec.data_hash()}
    inputs = {"raw": content_digest(raw, list(read_manifest(raw)["files"]))}
    key = output_key(config, inputs)
    folder = competition_root(spec.name) / "prepared" / key

    def up_to_date() -> Prepared:
        print(f"prepare: {spec.name}: up to date ({folder})")
        return Prepared(folder, key)

    return build_once(folder, f"the prepared arrays of {spec.name}",
                      lambda: _write_prepared(spec, raw, folder, key, config, inputs, force), up_to_date, force)


def image_allocator(staging: Path) -> Callable[[tuple[int, ...]], np.ndarray]:
    """Arrays for the readers: in memory, or (larger than memory: machine/memory.py) .npy files in the
    staging folder, memory-mapped, that become the prepared arrays without a copy."""
    made = itertools.count()

    def allocate(shape: tuple[int, ...]) -> np.ndarray:
        if not memory_mapped(int(np.prod(shape))):
            return np.empty(shape, dtype=np.uint8)
        path = staging / f"scratch-{next(made)}.npy"
        array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
        # Blocks reserved now: a full disk is an OSError here (one line, the disk handler's), not a
        # SIGBUS later when a write through the map finds no block.
        with open(path, "r+b") as fh:
            os.posix_fallocate(fh.fileno(), 0, path.stat().st_size)
        return array

    return allocate


def _store(array: np.ndarray, path: Path) -> None:
    """`array` as the .npy file `path`: a memory-mapped scratch file beside it is renamed, not copied."""
    if isinstance(array, np.memmap) and array.filename and Path(array.filename).parent == path.parent:
        array.flush()
        os.replace(array.filename, path)
    else:
        np.save(path, array)


def _write_prepared(spec: CompetitionSpec, raw: Path, folder: Path, key: str, config: dict, inputs: dict,
                    replace: bool) -> Prepared:
    summary: dict = {}
    with atomic_output(folder, "prepare", config, inputs, extra=summary, replace=replace) as staging:
        data = read_competition(spec, raw, image_allocator(staging))
        _store(data.train_images, staging / "train_images.npy")
        np.save(staging / "train_labels.npy", data.train_labels)
        _store(data.test_images, staging / "test_images.npy")
        for leftover in staging.glob("scratch-*.npy"):  # the rows a dataset's holdout copied elsewhere
            leftover.unlink()
        if data.test_labels is not None:  # `source: dataset`: the held-out rows' labels, for the local score
            np.save(staging / "test_labels.npy", data.test_labels)
        _write_rows(staging / "train.csv", ["id", "label"],
                    ((i, label_text(c, data.classes)) for i, c in zip(data.train_ids, data.train_labels)))
        _write_rows(staging / "test_ids.csv", ["id"], ((i,) for i in data.test_ids))
        summary.update({
            "classes": data.classes,
            "classes_from": "the data (classes: auto)" if spec.classes == "auto" else "the spec",
            "class_names": spec.with_classes(data.classes).display_names,
            "train_shape": list(data.train_images.shape),
            "test_shape": list(data.test_images.shape),
            "class_counts": label_counts(data.train_labels, len(data.classes)).tolist(),
        })
    counts = summary["class_counts"]
    found = f" ({', '.join(data.classes[:6])}{', ...' if len(data.classes) > 6 else ''}, read from the data)" \
        if spec.classes == "auto" else ""
    print(f"prepare: {spec.name}: {len(data.train_ids)} train / {len(data.test_ids)} test images "
          f"{tuple(data.train_images.shape[1:])}, {len(data.classes)} classes{found} ({min(counts)}..{max(counts)} "
          f"per class) -> {folder}")
    return Prepared(folder, key)


@dataclass(frozen=True)
class Folds:
    folder: Path
    key: str
    n_splits: int

    @property
    def csv_path(self) -> Path:
        return self.folder / "folds.csv"

    def fold_of_each_row(self, n_rows: int) -> np.ndarray:
        """fold[i] for every training row, checked: a hand-edited folds.csv with a bad fold is refused here."""
        try:
            with open(self.csv_path, newline="", encoding="utf-8") as fh:
                rows = list(csv.DictReader(fh))
            folds = [int(row["fold"]) for row in rows]
        except (OSError, UnicodeDecodeError, KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{self.csv_path}: unreadable fold table ({type(exc).__name__}: {exc}); "
                            "delete the folder and run `make prepare` again") from None
        if len(folds) != n_rows:
            raise DataError(f"{self.csv_path}: {len(folds)} rows for {n_rows} training images; "
                            "delete the folder and run `make prepare` again")
        bad = next((i for i, f in enumerate(folds) if not (0 <= f < self.n_splits or f == NEVER_HELD_OUT)), None)
        if bad is not None:
            raise DataError(f"{self.csv_path} row {bad + 2}: fold {folds[bad]} is outside 0..{self.n_splits - 1} "
                            f"(or {NEVER_HELD_OUT}: never held out); "
                            "delete the folder and run `make prepare` again")
        return np.array(folds, dtype=np.int64)


NEVER_HELD_OUT = -1  # folds.csv's fold of a row that always trains: its class has fewer images than folds


def assign_folds(labels: np.ndarray, n_splits: int, seed: int, groups: np.ndarray | None = None) -> np.ndarray:
    """fold[i] = the fold in which row i is held out: StratifiedKFold with shuffling fixed by `seed`, or
    StratifiedGroupKFold when some rows share a group (then a group never spans two folds). A class with
    fewer images than folds cannot be held out in every fold: its rows (and their groups) always train and
    are never held out (NEVER_HELD_OUT), so out-of-fold scores never count them."""
    # Imported here: scikit-learn and the SciPy it loads take 2 s to import, and folds are made once and cached,
    # while every command (and every tuning or cluster worker) imports this module.
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    counts = np.bincount(labels)
    rare = np.isin(labels, np.flatnonzero((counts > 0) & (counts < n_splits)))
    if groups is not None and rare.any():
        rare |= np.isin(groups, groups[rare])  # a near-copy of an always-trained row is never held out either
    split = np.flatnonzero(~rare)
    fold = np.full(len(labels), NEVER_HELD_OUT, dtype=np.int64)
    if len(np.unique(labels[split])) < 2 or len(split) < n_splits:
        raise DataError(f"too few images to hold out: {len(split)} rows are in classes of at least {n_splits} images (a "
                        f"class with fewer than folds.n_splits={n_splits} images always trains); lower n_splits in the "
                        "competition YAML")
    sub_groups = None if groups is None else groups[split]
    if sub_groups is not None and len(np.unique(sub_groups)) < len(sub_groups):
        if len(np.unique(sub_groups)) < n_splits:
            raise DataError(f"only {len(np.unique(sub_groups))} groups of rows for folds.n_splits={n_splits}; lower "
                            "n_splits, or check folds.group_column")
        _, inverse, sizes = np.unique(sub_groups, return_inverse=True, return_counts=True)
        alone = sizes[inverse] == 1
        if alone.sum() > len(split) // 2:  # mostly single rows (near-duplicates are rare): see _deal_single_rows
            fold[split] = _deal_single_rows(labels[split], sub_groups, alone, n_splits, seed)
            return fold
        splits = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed).split(
            np.zeros(len(split)), labels[split], sub_groups)
    else:
        splits = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed).split(np.zeros(len(split)),
                                                                                            labels[split])
    for k, (_, held_out) in enumerate(splits):
        fold[split[held_out]] = k
    return fold


def iterative_stratification(sets: np.ndarray, n_splits: int, seed: int) -> np.ndarray:
    """fold[i] for the rows of a 0/1 label matrix, by iterative stratification (Sechidis, Tsoumakas and
    Vlahavas, 2011): the label with the fewest rows still unassigned goes first; each of its rows joins the
    fold that most lacks that label (ties: the fold that most lacks rows, then a seeded draw), so every
    label's share, the rare ones first, ends close to even across folds. Rows with no label fill the
    folds that lack rows. (The `iterative-stratification` package implements the same, but its wheel
    installs a top-level `tests` package over the project's own.)"""
    rng = np.random.default_rng(seed)
    n_rows = len(sets)
    order = rng.permutation(n_rows)  # a seeded order of the rows: ties among them are broken by it
    sets = sets[order].astype(bool)
    wanted_rows = np.full(n_splits, n_rows / n_splits)
    wanted_labels = np.tile(sets.sum(axis=0) / n_splits, (n_splits, 1))  # [fold, label]
    fold = np.full(n_rows, -1, dtype=np.int64)
    left = sets.sum(axis=0).astype(np.int64)  # unassigned rows holding each label
    for _ in range(sets.shape[1]):
        if not left.any():
            break
        label = int(np.argmin(np.where(left > 0, left, np.iinfo(np.int64).max)))
        for row in np.flatnonzero((fold < 0) & sets[:, label]):
            need = wanted_labels[:, label]
            candidates = np.flatnonzero(need == need.max())
            if len(candidates) > 1:
                candidates = candidates[wanted_rows[candidates] == wanted_rows[candidates].max()]
            k = int(candidates[0] if len(candidates) == 1 else rng.choice(candidates))
            fold[row] = k
            wanted_rows[k] -= 1
            wanted_labels[k, sets[row]] -= 1
            left[sets[row]] -= 1
    for row in np.flatnonzero(fold < 0):  # rows holding no label
        k = int(np.argmax(wanted_rows))
        fold[row] = k
        wanted_rows[k] -= 1
    out = np.empty(n_rows, dtype=np.int64)
    out[order] = fold
    return out


def assign_multilabel_folds(labels: np.ndarray, n_splits: int, seed: int, groups: np.ndarray | None = None) -> np.ndarray:
    """fold[i] for a 0/1 label matrix: `iterative_stratification`. Rows of one group (near-copies,
    folds.group_column) are stratified as one row holding the union of their labels, so a group never
    spans two folds."""
    if groups is None:
        groups = np.arange(len(labels))
    _, group_of_row = np.unique(groups, return_inverse=True)
    n_groups = group_of_row.max() + 1
    if n_groups < n_splits:
        raise DataError(f"only {n_groups} groups of rows for folds.n_splits={n_splits}; lower n_splits, or check "
                        "folds.group_column")
    union = np.zeros((n_groups, labels.shape[1]), dtype=np.int64)
    np.maximum.at(union, group_of_row, labels.astype(np.int64))
    return iterative_stratification(union, n_splits, seed)[group_of_row]


def _deal_single_rows(labels: np.ndarray, groups: np.ndarray, alone: np.ndarray, n_splits: int, seed: int) -> np.ndarray:
    """Folds for rows of which most stand alone: the rows in groups of two or more go first, through
    StratifiedGroupKFold (a few hundred rows at most: fast); then each class's single rows, in a seeded
    order, fill the folds that are furthest below that class's even share. The same stratification and
    groups as StratifiedGroupKFold on every row, which took 45 s for Fashion-MNIST's 60,000 rows (all but
    82 alone) on a 2-core CPU; this takes well under a second."""
    from sklearn.model_selection import StratifiedGroupKFold

    fold = np.zeros(len(labels), dtype=np.int64)
    grouped = np.flatnonzero(~alone)
    counts = np.zeros((n_splits, labels.max() + 1), dtype=np.int64)  # rows of each class in each fold so far
    if len(np.unique(groups[grouped])) >= n_splits:
        splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        with warnings.catch_warnings():  # a class with fewer grouped rows than folds: the single rows even it out
            warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
            held_out_rows = [held_out for _, held_out in splitter.split(np.zeros(len(grouped)), labels[grouped],
                                                                        groups[grouped])]
        for k, held_out in enumerate(held_out_rows):
            fold[grouped[held_out]] = k
    else:  # fewer groups than folds: one group a fold, in a seeded order
        order = np.random.default_rng(seed).permutation(np.unique(groups[grouped]))
        for k, group in enumerate(order):
            fold[grouped[groups[grouped] == group]] = k
    np.add.at(counts, (fold[grouped], labels[grouped]), 1)
    rng = np.random.default_rng(seed)
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(alone & (labels == label)))
        share = np.count_nonzero(labels == label) / n_splits
        for row in rows:  # the fold with the most missing; ties: the fold after the last one filled
            k = int(np.argmin(counts[:, label] - share + 1e-9 * ((np.arange(n_splits) - row) % n_splits)))
            fold[row] = k
            counts[k, label] += 1
    return fold


def fold_groups(spec: CompetitionSpec, data: CanonicalData) -> tuple[np.ndarray | None, dict]:
    """(a group number per training row, or None when every row stands alone; what was found)."""
    from pipelines.stages.duplicates import find_duplicates, groups_from_pairs

    pairs: list[tuple[int, int, int]] = []
    found: dict = {}
    report = find_duplicates(np.asarray(data.train_images), np.asarray(data.test_images))  # reported either way
    found["duplicates"] = report.summary()
    if spec.folds.duplicates == "group":
        pairs += report.train_pairs
    if spec.folds.group_column:
        values = group_values(spec, data.train_ids)
        first: dict[str, int] = {}
        for row, value in enumerate(values):
            if value in first:
                pairs.append((first[value], row, 0))
            first.setdefault(value, row)
        found["group_column"] = {"name": spec.folds.group_column, "groups": len(first)}
    return (groups_from_pairs(len(data.train_ids), pairs) if pairs else None), found


def group_values(spec: CompetitionSpec, train_ids: list[str]) -> list[str]:
    """The group column of the raw train.csv, in the prepared rows' order."""
    from pipelines.stages.readers import read_table

    path = raw_dir(spec) / spec.layout.train_csv
    table = read_table(path, [spec.id_column, spec.folds.group_column], "groups (folds.group_column)")
    by_id = dict(zip(table[spec.id_column].str.strip(), table[spec.folds.group_column].str.strip()))
    missing = [i for i in train_ids if i not in by_id]
    if missing:
        raise DataError(f"{path}: no row for training id '{missing[0]}', so it has no group; list every image")
    return [by_id[i] for i in train_ids]


# 2: data sets of mostly single rows get their folds from _deal_single_rows (fold contents differ from 1's).
FOLD_ASSIGNMENT_REVISION = 2


def make_folds(spec: CompetitionSpec, prepared: Prepared, force: bool = False) -> Folds:
    config = {**spec.folds.model_dump(), "assignment": FOLD_ASSIGNMENT_REVISION}
    key = output_key(config, {"prepared": prepared.key})
    folder = competition_root(spec.name) / "folds" / key

    def up_to_date() -> Folds:
        print(f"folds: {spec.name}: up to date ({folder})")
        return Folds(folder, key, spec.folds.n_splits)

    return build_once(folder, f"the folds of {spec.name}", lambda: _write_folds(spec, prepared, folder, key, config, force),
                      up_to_date, force)


def _write_folds(spec: CompetitionSpec, prepared: Prepared, folder: Path, key: str, config: dict, replace: bool) -> Folds:
    data = prepared.load()
    groups, found = fold_groups(spec, data)
    assign = assign_multilabel_folds if data.train_labels.ndim == 2 else assign_folds
    fold = assign(data.train_labels, spec.folds.n_splits, spec.folds.seed, groups)
    table = fold_class_counts(data.train_labels, fold, len(data.classes))
    if "duplicates" in found:
        dups = found["duplicates"]
        kept = "each kept in one fold" if spec.folds.duplicates == "group" else "not grouped (folds.duplicates: ignore)"
        print(f"folds: {spec.name}: {dups['train_pairs']} near-duplicate pairs within train ({kept}), "
              f"{dups['train_test_pairs']} between train and test (perceptual hash, <= {dups['max_distance_bits']} "
              "bits apart)")
    never = fold == NEVER_HELD_OUT
    if never.any():
        per_class = np.bincount(data.train_labels[never], minlength=len(data.classes))
        found["never_held_out"] = {"rows": int(never.sum()),
                                   "classes": {data.classes[c]: int(n) for c, n in enumerate(per_class) if n}}
        shown = ", ".join(f"{label} ({n})" for label, n in list(found["never_held_out"]["classes"].items())[:6])
        print(f"folds: {spec.name}: {int(never.sum())} rows always train and are never held out: their class has "
              f"fewer than {spec.folds.n_splits} images ({shown}); out-of-fold scores leave them out")
    if data.train_labels.ndim == 2:  # multi-label: each fold's images holding each label
        found["label_counts"] = {label: table[:, c].tolist() for c, label in enumerate(data.classes)}
    sizes = np.bincount(fold[fold != NEVER_HELD_OUT], minlength=spec.folds.n_splits)
    with atomic_output(folder, "folds", config, {"prepared": prepared.key},
                       extra={"fold_sizes": sizes.tolist(), **found}, replace=replace) as staging:
        _write_rows(staging / "folds.csv", ["id", "label", "fold"],
                    ((i, label_text(c, data.classes), f) for i, c, f in zip(data.train_ids, data.train_labels, fold)))
    deviation = max_deviation_from_ideal(table)
    how = "iteratively stratified (multi-label)" if data.train_labels.ndim == 2 else "stratified"
    print(f"folds: {spec.name}: {spec.folds.n_splits} {how}{' group' if groups is not None else ''} folds "
          f"(seed {spec.folds.seed}), sizes "
          f"{sizes.tolist()}, per-{'label' if data.train_labels.ndim == 2 else 'class'} counts within "
          f"{deviation:.2f} of ideal -> {folder / 'folds.csv'}")
    return Folds(folder, key, spec.folds.n_splits)


def fold_class_counts(labels: np.ndarray, fold: np.ndarray, num_classes: int) -> np.ndarray:
    """counts[k, c] = images of class c (multi-label: holding label c) held out in fold k (rows never held
    out count in none)."""
    held = fold != NEVER_HELD_OUT
    counts = np.zeros((fold.max() + 1, num_classes), dtype=np.int64)
    if labels.ndim == 2:
        np.add.at(counts, fold[held], labels[held].astype(np.int64))
    else:
        np.add.at(counts, (fold[held], labels[held]), 1)
    return counts


def max_deviation_from_ideal(counts: np.ndarray) -> float:
    ideal = counts.sum(axis=0, keepdims=True) / counts.shape[0]
    return float(np.abs(counts - ideal).max())
