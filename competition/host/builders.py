"""Build the competitions the local host ships, from real data where this machine has it.

A built competition is a folder the host can serve (the same folder `python -m competition.host add`
accepts for a course competition of one's own):

    competition.json   title, metric, id/label columns, labels, daily limit
    data/              exactly the files participants download
    solution.csv       id,label,Usage — hidden test labels with a fixed 50/50 public/private split
"""
from __future__ import annotations

import csv
import gzip
import json
import math
from pathlib import Path
from typing import Callable

import numpy as np

from competition import metrics

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
PUBLIC_FRACTION = 0.5
DEFAULT_DEADLINE = "2099-12-31T23:59:59"  # far ahead: private scores stay hidden until `close`
SPLIT_SEED = 20240601  # fixed: the public/private split must never change between host restarts


class BuildError(Exception):
    pass


def write_csv(path: Path, header: list[str], rows) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def public_private_usage(n: int) -> list[str]:
    """A fixed, seeded split of n test rows: the first PUBLIC_FRACTION of a permutation is Public."""
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    usage = np.full(n, "Private", dtype=object)
    usage[order[: int(round(n * PUBLIC_FRACTION))]] = "Public"
    return list(usage)


def write_competition(dest: Path, meta: dict, test_ids: list[str], test_labels: list[str]) -> None:
    """Write competition.json, solution.csv and data/sample_submission.csv in the metric's format: the
    first label everywhere, or equal probabilities in one column per class (`class_<label>`); the id and
    label columns named as competition.json names them."""
    (dest / "data").mkdir(parents=True, exist_ok=True)
    (dest / "competition.json").write_text(json.dumps(meta, indent=2) + "\n")
    usage = public_private_usage(len(test_ids))
    id_column, label_column = meta["id_column"], meta["label_column"]
    write_csv(dest / "solution.csv", [id_column, label_column, "Usage"], zip(test_ids, test_labels, usage))
    labels = meta["labels"]
    chosen = metrics.bound(meta["metric"])
    if chosen.submission == "probabilities" and chosen.multi_label:  # one column per label, named as it
        header, cells = [id_column, *labels], ["0.5"] * len(labels)
    elif chosen.submission == "probabilities" and meta.get("positive_column"):
        header, cells = [id_column, label_column], ["0.5"]  # two classes: P(the second), as dogs-vs-cats asks
    elif chosen.submission == "probabilities":
        header, cells = [id_column, *(f"class_{label}" for label in labels)], [f"{1 / len(labels):.6g}"] * len(labels)
    else:
        header, cells = [id_column, label_column], [labels[0]]
    write_csv(dest / "data" / "sample_submission.csv", header, ((i, *cells) for i in test_ids))


def write_multilabel_baseline(dest: Path, meta: dict, test_ids: list[str], train_images: np.ndarray,
                              train_sets: np.ndarray, test_images: np.ndarray) -> None:
    """A simple multi-label model's test predictions (baselines/label-templates.csv), entered on the
    leaderboard as a benchmark: per label, the difference between the mean image of the training images
    that hold it and of those that do not, as a linear score on raw pixels; its offset puts as many test
    images above 0.5 as the label's share of the training images."""
    train = train_images.reshape(len(train_images), -1).astype(np.float32) / 255
    test = test_images.reshape(len(test_images), -1).astype(np.float32) / 255
    probs = np.zeros((len(test), train_sets.shape[1]))
    for c in range(train_sets.shape[1]):
        has = train_sets[:, c] == 1
        template = train[has].mean(0) - train[~has].mean(0)
        score = test @ template
        score = (score - score.mean()) / (score.std() + 1e-6)
        probs[:, c] = 1 / (1 + np.exp(-(score - np.quantile(score, 1 - has.mean()))))
    write_benchmark(dest, meta, test_ids, probs, "label-templates.csv")


def class_centroids(images: np.ndarray, label_index: np.ndarray, classes: int) -> np.ndarray:
    """The mean image of each class, flattened (float32, 0..1)."""
    flat = images.reshape(len(images), -1).astype(np.float32) / 255
    return np.stack([flat[label_index == c].mean(axis=0) for c in range(classes)])


def write_baseline(dest: Path, meta: dict, test_ids: list[str], centroids: np.ndarray, test_images: np.ndarray) -> None:
    """A simple model's test predictions, hidden beside the solution (baselines/nearest-centroid.csv): the
    nearest class centroid on raw pixels, as probabilities from the standardised distances, written in the
    competition's submission format. The host enters it on the leaderboard as a benchmark."""
    flat = test_images.reshape(len(test_images), -1).astype(np.float32) / 255
    distances = (flat ** 2).sum(1)[:, None] - 2 * flat @ centroids.T + (centroids ** 2).sum(1)[None, :]
    logits = -(distances - distances.mean(1, keepdims=True)) / (distances.std(1, keepdims=True) + 1e-6)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    write_benchmark(dest, meta, test_ids, probs, "nearest-centroid.csv")


def write_benchmark(dest: Path, meta: dict, test_ids: list[str], probs: np.ndarray, name: str) -> None:
    """A simple model's test probabilities, hidden beside the solution as baselines/`name` in the
    competition's submission format (the sample submission's columns): the host enters it on the
    leaderboard as a benchmark."""
    from competition.formats import SubmissionFormat

    header = (dest / "data" / "sample_submission.csv").read_text().splitlines()[0].split(",")
    fmt = SubmissionFormat.of(metrics.bound(meta["metric"]), meta["id_column"], meta["label_column"],
                              meta["labels"], header)
    (dest / "baselines").mkdir(exist_ok=True)
    write_csv(dest / "baselines" / name, fmt.header,
              ([sample_id, *fmt.cells(row)] for sample_id, row in zip(test_ids, probs)))


def _meta(slug: str, title: str, labels: list[str], description: str, synthetic: bool = False,
          metric: str | dict = "accuracy", code_competition: bool = False, columns: tuple[str, str] = ("id", "label"),
          **more) -> dict:
    return {**more,
        "slug": slug,
        "title": title,
        "description": description,
        "category": "Community",
        "metric": metric,
        "id_column": columns[0],  # the sample submission's (and the solution's) columns
        "label_column": columns[1],
        "labels": labels,
        "max_daily_submissions": 20,
        "deadline": DEFAULT_DEADLINE,
        "synthetic": synthetic,
        "code_competition": code_competition,
    }


# --- fashion-mnist: real data from Debian's dataset-fashion-mnist, laid out as .npy arrays -------------


def read_idx(path: Path) -> np.ndarray:
    """Read a (gzipped) IDX file: magic, dims, then uint8 data."""
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != math.prod(dims):
        raise BuildError(f"{path}: IDX header says {dims} but holds {data.size} bytes")
    return data.reshape(dims)


def fashion_mnist_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, test images, test labels) of Debian's Fashion-MNIST."""
    files = {k: FASHION_MNIST_DIR / f"{k}-ubyte.gz" for k in ("train-images-idx3", "train-labels-idx1", "t10k-images-idx3", "t10k-labels-idx1")}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise BuildError(
            f"Fashion-MNIST files not found ({missing[0]}); install them with: sudo apt-get install dataset-fashion-mnist"
        )
    return (read_idx(files["train-images-idx3"]), read_idx(files["train-labels-idx1"]),
            read_idx(files["t10k-images-idx3"]), read_idx(files["t10k-labels-idx1"]))


def build_fashion_mnist(dest: Path, slug: str = "fashion-mnist") -> None:
    train_images, train_labels, test_images, test_labels = fashion_mnist_arrays()
    meta = BUILTIN_META[slug]
    if slug == "fashion-mnist-imbalanced":
        train_images, train_labels, test_images, test_labels = long_tail(train_images, train_labels, test_images,
                                                                         test_labels)
    train_ids = [str(i) for i in range(len(train_images))]
    test_ids = [str(len(train_images) + i) for i in range(len(test_images))]
    write_competition(dest, meta, test_ids, [str(v) for v in test_labels])
    write_baseline(dest, meta, test_ids, class_centroids(train_images, train_labels, len(meta["labels"])), test_images)
    np.save(dest / "data" / "train_images.npy", train_images)
    np.save(dest / "data" / "test_images.npy", test_images)
    write_csv(dest / "data" / "train.csv", ["id", "label"], zip(train_ids, train_labels.tolist()))
    if meta.get("code_competition"):
        hide_test_set(dest)


CODE_COMPETITION_VISIBLE_ROWS = 20


def hide_test_set(dest: Path) -> None:
    """A code competition, as on Kaggle: participants download the first rows of the test set only; the
    whole test set (hidden/, laid over data/) is seen only by kernels, when they run on the host."""
    import shutil

    data, hidden, rows = dest / "data", dest / "hidden", CODE_COMPETITION_VISIBLE_ROWS
    hidden.mkdir()
    (data / "sample_submission.csv").rename(hidden / "sample_submission.csv")
    lines = (hidden / "sample_submission.csv").read_text().splitlines(keepends=True)
    (data / "sample_submission.csv").write_text("".join(lines[:rows + 1]))
    if (data / "test_images.npy").is_file():  # one array
        (data / "test_images.npy").rename(hidden / "test_images.npy")
        np.save(data / "test_images.npy", np.load(hidden / "test_images.npy")[:rows])
    else:  # one image file an id, in test/
        (data / "test").rename(hidden / "test")
        (data / "test").mkdir()
        for line in lines[1:rows + 1]:
            name = f"{line.split(',', 1)[0]}.png"
            shutil.copyfile(hidden / "test" / name, data / "test" / name)


LONG_TAIL_KEEP = [1.0, 0.6, 0.36, 0.22, 0.13, 0.08, 0.05, 0.03, 0.02, 0.015]  # of each class, by a seeded shuffle


def long_tail(train_images, train_labels, test_images, test_labels):
    """Fashion-MNIST with a long tail of rare classes, in training and test alike (seeded): class order
    shuffled once, then class i keeps LONG_TAIL_KEEP[i] of its images."""
    rng = np.random.default_rng(SPLIT_SEED)
    keep_share = np.array(LONG_TAIL_KEEP)[np.argsort(rng.permutation(10))]

    def keep(labels: np.ndarray) -> np.ndarray:
        draw = rng.random(len(labels))
        return np.flatnonzero(draw < keep_share[labels])

    train_rows, test_rows = keep(train_labels), keep(test_labels)
    return train_images[train_rows], train_labels[train_rows], test_images[test_rows], test_labels[test_rows]


# --- replicas of real competitions' layouts, from real pixels --------------------------------------------


def write_pixel_csv(path: Path, images: np.ndarray, labels: np.ndarray | None = None, label_column: str = "label") -> None:
    """digit-recognizer's CSV: (`label`,) `pixel0` .. `pixel{H*W-1}`, one row an image."""
    flat = images.reshape(len(images), -1).astype(np.int64)
    header = [f"pixel{i}" for i in range(flat.shape[1])]
    if labels is not None:
        flat, header = np.column_stack([labels.astype(np.int64), flat]), [label_column, *header]
    np.savetxt(path, flat, fmt="%d", delimiter=",", header=",".join(header), comments="")


DIGIT_RECOGNIZER_ROWS = (12_000, 4_000)  # a fifth of Fashion-MNIST's training set, 40% of its test set


def build_digit_recognizer_replica(dest: Path, slug: str = "digit-recognizer-replica") -> None:
    """digit-recognizer's layout with Fashion-MNIST pixels: train.csv (`label`, pixel0..pixel783), test.csv
    (pixels only), sample_submission.csv (`ImageId` from 1, `Label`)."""
    train_images, train_labels, test_images, test_labels = fashion_mnist_arrays()
    n_train, n_test = DIGIT_RECOGNIZER_ROWS
    train_images, train_labels = train_images[:n_train], train_labels[:n_train]
    test_images, test_labels = test_images[:n_test], test_labels[:n_test]
    meta = BUILTIN_META[slug]
    test_ids = [str(i + 1) for i in range(n_test)]
    write_competition(dest, meta, test_ids, [str(v) for v in test_labels])
    write_baseline(dest, meta, test_ids, class_centroids(train_images, train_labels, len(meta["labels"])), test_images)
    write_pixel_csv(dest / "data" / "train.csv", train_images, train_labels)
    write_pixel_csv(dest / "data" / "test.csv", test_images)


# --- dogs-vs-cats-replica: dogs-vs-cats-redux's layout with Fashion-MNIST pixels ------------------------

DOGS_VS_CATS_CLASSES = {2: "cat", 4: "dog"}  # Fashion-MNIST's pullover and coat: alike enough to be hard
DOGS_VS_CATS_ROWS = (6_000, 2_000)
DOGS_VS_CATS_SIDES = (40, 160)  # each image upscaled to its own width and height in this range, as photos vary


def _image_file(image: np.ndarray, size: tuple[int, int], fmt: str = "JPEG") -> bytes:
    """A 28x28 grey image as an RGB file of `size` (width, height), as a photo or a scan would come."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    options = {"quality": 90} if fmt == "JPEG" else {"compress_level": 1}
    Image.fromarray(image).convert("RGB").resize(size, Image.BILINEAR).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _varied_size(rng: np.random.Generator, sides: tuple[int, int]) -> tuple[int, int]:
    """A width and a height, each drawn from `sides` (its own aspect ratio)."""
    return tuple(int(v) for v in rng.integers(*sides, size=2, endpoint=True))


def _zip_of(path: Path, files: dict[str, bytes]) -> None:
    """A zip written in a fixed order with fixed times: the same bytes on every build."""
    import zipfile

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, data in files.items():
            archive.writestr(zipfile.ZipInfo(name, date_time=(2013, 9, 25, 0, 0, 0)), data)


def build_dogs_vs_cats_replica(dest: Path, slug: str = "dogs-vs-cats-replica") -> None:
    """dogs-vs-cats-redux's layout: data/train.zip (train/cat.0.jpg ... dog.N.jpg, the label only in the file
    name), data/test.zip (test/1.jpg ...), sample_submission.csv (`id`, `label` = P(dog)); JPEGs of varied
    sizes; scored by log loss. Fashion-MNIST pullovers are the cats, coats the dogs."""
    train_images, train_labels, test_images, test_labels = fashion_mnist_arrays()
    rng = np.random.default_rng(SPLIT_SEED)
    codes = np.array(sorted(DOGS_VS_CATS_CLASSES))
    n_train, n_test = DOGS_VS_CATS_ROWS
    train_rows = np.flatnonzero(np.isin(train_labels, codes))[:n_train]
    test_rows = np.flatnonzero(np.isin(test_labels, codes))[:n_test]
    meta = BUILTIN_META[slug]
    test_ids = [str(i + 1) for i in range(len(test_rows))]
    named = [DOGS_VS_CATS_CLASSES[int(c)] for c in test_labels[test_rows]]
    write_competition(dest, meta, test_ids, named)
    class_index = np.searchsorted(codes, train_labels[train_rows])
    write_baseline(dest, meta, test_ids, class_centroids(train_images[train_rows], class_index, 2), test_images[test_rows])
    count: dict[str, int] = {}
    train_files = {}
    for row in train_rows:
        label = DOGS_VS_CATS_CLASSES[int(train_labels[row])]
        count[label] = count.get(label, -1) + 1
        train_files[f"train/{label}.{count[label]}.jpg"] = _image_file(train_images[row], _varied_size(rng, DOGS_VS_CATS_SIDES))
    _zip_of(dest / "data" / "train.zip", train_files)
    _zip_of(dest / "data" / "test.zip", {f"test/{i}.jpg": _image_file(test_images[row], _varied_size(rng, DOGS_VS_CATS_SIDES))
                                         for i, row in zip(test_ids, test_rows)})


def _pick(labels: np.ndarray, counts: dict[int, int], offset: int = 0) -> np.ndarray:
    """Rows of `labels`: the first `counts[c]` of each class c (after skipping `offset` of each), in row order."""
    rows = [np.flatnonzero(labels == c)[offset: offset + n] for c, n in counts.items()]
    return np.sort(np.concatenate(rows))


def _hex_ids(rng: np.random.Generator, n: int, digits: int) -> list[str]:
    """n distinct ids of `digits` hex characters, as Kaggle's image competitions name their files."""
    ids: list[str] = []
    seen: set[str] = set()
    while len(ids) < n:
        value = "".join(f"{int(v):x}" for v in rng.integers(0, 16, size=digits))
        if value not in seen:
            seen.add(value)
            ids.append(value)
    return ids


# --- aerial-cactus-replica: train.csv + 32x32 JPEGs in nested zips, ROC AUC ----------------------------

CACTUS_CLASSES = {0: "0", 6: "1"}  # Fashion-MNIST's T-shirts have no cactus, its shirts do (3 in 4, as there)


def build_aerial_cactus_replica(dest: Path, slug: str = "aerial-cactus-replica") -> None:
    """aerial-cactus-identification's layout: train.csv (`id` = the file name, `has_cactus` 0/1), train.zip
    and test.zip (32x32 JPEGs) inside the download, sample_submission.csv (`id`, `has_cactus` = P(1)); ROC AUC."""
    train_images, train_labels, test_images, test_labels = fashion_mnist_arrays()
    rng = np.random.default_rng(SPLIT_SEED)
    train_rows, test_rows = _pick(train_labels, {0: 2000, 6: 6000}), _pick(test_labels, {0: 334, 6: 1000})
    train_ids = [f"{i}.jpg" for i in _hex_ids(rng, len(train_rows), 32)]
    test_ids = [f"{i}.jpg" for i in _hex_ids(rng, len(test_rows), 32)]
    meta = BUILTIN_META[slug]
    write_competition(dest, meta, test_ids, [CACTUS_CLASSES[int(c)] for c in test_labels[test_rows]])
    index = (train_labels[train_rows] == 6).astype(np.int64)
    write_baseline(dest, meta, test_ids, class_centroids(train_images[train_rows], index, 2), test_images[test_rows])
    write_csv(dest / "data" / "train.csv", ["id", "has_cactus"], zip(train_ids, index.tolist()))
    for name, ids, rows, images in (("train", train_ids, train_rows, train_images), ("test", test_ids, test_rows, test_images)):
        _zip_of(dest / "data" / f"{name}.zip", {f"{name}/{i}": _image_file(images[row], (32, 32)) for i, row in zip(ids, rows)})


# --- plant-seedlings-replica: class folders named with spaces, PNGs of varied sizes, micro-F1 -------------

SEEDLING_NAMES = ["Black-grass", "Charlock", "Cleavers", "Common Chickweed", "Common wheat", "Fat Hen",
                  "Loose Silky-bent", "Maize", "Scentless Mayweed", "Small-flowered Cranesbill"]  # Fashion-MNIST 0..9
SEEDLING_TRAIN = [260, 390, 290, 610, 220, 470, 650, 220, 510, 500]  # uneven, as the real counts are
SEEDLING_SIDES = (49, 160)


def build_plant_seedlings_replica(dest: Path, slug: str = "plant-seedlings-replica") -> None:
    """plant-seedlings-classification's layout: train/<species>/<hash>.png (species named with spaces),
    test/<hash>.png, sample_submission.csv (`file` = the file name, `species`); PNGs of varied sizes; micro-F1."""
    train_images, train_labels, test_images, test_labels = fashion_mnist_arrays()
    rng = np.random.default_rng(SPLIT_SEED)
    train_rows = _pick(train_labels, dict(enumerate(SEEDLING_TRAIN)))
    test_rows = _pick(test_labels, {c: 80 for c in range(10)})
    meta = BUILTIN_META[slug]
    test_ids = [f"{i}.png" for i in _hex_ids(rng, len(test_rows), 9)]
    write_competition(dest, meta, test_ids, [SEEDLING_NAMES[int(c)] for c in test_labels[test_rows]])
    write_baseline(dest, meta, test_ids, class_centroids(train_images[train_rows], train_labels[train_rows], 10),
                   test_images[test_rows])
    for name, row in zip(_hex_ids(rng, len(train_rows), 9), train_rows):
        folder = dest / "data" / "train" / SEEDLING_NAMES[int(train_labels[row])]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.png").write_bytes(_image_file(train_images[row], _varied_size(rng, SEEDLING_SIDES), "PNG"))
    (dest / "data" / "test").mkdir(parents=True, exist_ok=True)
    for name, row in zip(test_ids, test_rows):
        (dest / "data" / "test" / name).write_bytes(_image_file(test_images[row], _varied_size(rng, SEEDLING_SIDES), "PNG"))


# --- aptos-replica: large PNGs of varied sizes, train.csv, QWK ------------------------------------------------

APTOS_TRAIN = {0: 740, 1: 150, 2: 400, 3: 80, 4: 130}  # aptos2019's shares: half healthy, few severe
APTOS_SIDES = (300, 640)


def build_aptos_replica(dest: Path, slug: str = "aptos-replica") -> None:
    """aptos2019-blindness-detection's layout: train.csv (`id_code`, `diagnosis` 0..4), train_images/ and
    test_images/ of large PNGs of varied sizes, test.csv, sample_submission.csv (`id_code`, `diagnosis`);
    quadratic weighted kappa. Fashion-MNIST's classes 0..4 are the grades."""
    train_images, train_labels, test_images, test_labels = fashion_mnist_arrays()
    rng = np.random.default_rng(SPLIT_SEED)
    train_rows = _pick(train_labels, APTOS_TRAIN)
    test_rows = _pick(test_labels, {c: round(n / 3) for c, n in APTOS_TRAIN.items()})
    train_ids, test_ids = _hex_ids(rng, len(train_rows), 12), _hex_ids(rng, len(test_rows), 12)
    meta = BUILTIN_META[slug]
    write_competition(dest, meta, test_ids, [str(int(c)) for c in test_labels[test_rows]])
    write_baseline(dest, meta, test_ids, class_centroids(train_images[train_rows], train_labels[train_rows], 5),
                   test_images[test_rows])
    write_csv(dest / "data" / "train.csv", ["id_code", "diagnosis"], zip(train_ids, train_labels[train_rows].tolist()))
    write_csv(dest / "data" / "test.csv", ["id_code"], ((i,) for i in test_ids))
    for folder, ids, rows, images in (("train_images", train_ids, train_rows, train_images),
                                      ("test_images", test_ids, test_rows, test_images)):
        (dest / "data" / folder).mkdir(parents=True, exist_ok=True)
        for i, row in zip(ids, rows):
            (dest / "data" / folder / f"{i}.png").write_bytes(_image_file(images[row], _varied_size(rng, APTOS_SIDES), "PNG"))


# --- digits: scikit-learn's bundled 8x8 digits as PNG files + CSV ------------------------------------


# --- fashion-mosaic-*: planet-like multi-label replicas, 2x2 mosaics of Fashion-MNIST garments ---------

MOSAIC_TAGS = ["tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]
MOSAIC_ROWS = (10_000, 4_000)
MOSAIC_FILL = 0.6  # each of the four cells holds a garment with this chance (at least one always does)


def fashion_mosaics(images: np.ndarray, labels: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n 56x56 mosaics of four 28x28 cells, each a garment (drawn without repeats while they last) or black,
    and each mosaic's 0/1 set of the garments' classes."""
    filled = rng.random((n, 4)) < MOSAIC_FILL
    filled[~filled.any(axis=1), rng.integers(0, 4, size=int((~filled.any(axis=1)).sum()))] = True
    order = rng.permutation(len(images))
    mosaics = np.zeros((n, 56, 56), dtype=np.uint8)
    sets = np.zeros((n, 10), dtype=np.int64)
    used = 0
    for row, cell in zip(*np.nonzero(filled)):
        source = order[used % len(order)]
        used += 1
        y, x = divmod(int(cell), 2)
        mosaics[row, 28 * y:28 * y + 28, 28 * x:28 * x + 28] = images[source]
        sets[row, labels[source]] = 1
    return mosaics, sets


def build_fashion_mosaic(dest: Path, slug: str) -> None:
    """A planet-like multi-label competition: each image a 2x2 mosaic of Fashion-MNIST garments, its
    labels the garments it holds (1 to 4 cells filled, so 1 to 4 labels). `fashion-mosaic-tags` is
    planet-understanding-the-amazon-from-space's layout: train_v2.csv (`image_name`, `tags` separated by
    spaces), train-jpg.zip and test-jpg.zip of JPEGs, scored by mean F2 per image. `fashion-mosaic-auc` is
    the medical competitions' layout: train.csv with one 0/1 column per label, PNG folders, one probability
    column per label, scored by mean column-wise ROC AUC. The same images and labels in both."""
    train_images, train_labels, test_images, test_labels = fashion_mnist_arrays()
    rng = np.random.default_rng(SPLIT_SEED)
    train, train_sets = fashion_mosaics(train_images, train_labels, MOSAIC_ROWS[0], rng)
    test, test_sets = fashion_mosaics(test_images, test_labels, MOSAIC_ROWS[1], rng)
    meta = BUILTIN_META[slug]
    tags = meta["labels"]
    train_ids, test_ids = [f"train_{i}" for i in range(len(train))], [f"test_{i}" for i in range(len(test))]

    def joined(sets: np.ndarray) -> list[str]:
        return [" ".join(tags[c] for c in np.flatnonzero(row)) for row in sets]

    write_competition(dest, meta, test_ids, joined(test_sets))
    write_multilabel_baseline(dest, meta, test_ids, train, train_sets, test)
    if slug == "fashion-mosaic-tags":
        write_csv(dest / "data" / "train_v2.csv", ["image_name", "tags"], zip(train_ids, joined(train_sets)))
        for name, ids, images in (("train-jpg", train_ids, train), ("test-jpg", test_ids, test)):
            _zip_of(dest / "data" / f"{name}.zip", {f"{name}/{i}.jpg": _image_file(image, (56, 56))
                                                     for i, image in zip(ids, images)})
    else:
        write_csv(dest / "data" / "train.csv", ["id", *tags], ([i, *row.tolist()] for i, row in zip(train_ids, train_sets)))
        for name, ids, images in (("train", train_ids, train), ("test", test_ids, test)):
            (dest / "data" / name).mkdir(parents=True, exist_ok=True)
            for i, image in zip(ids, images):
                _save_png(image, dest / "data" / name / f"{i}.png")


def _save_png(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(array).save(path, format="PNG")


def build_digits(dest: Path, slug: str = "digits") -> None:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    # sklearn stores 0..16 intensities; scale to the full uint8 range as a real image file would hold.
    images = np.clip(bunch.images * 16, 0, 255).astype(np.uint8)
    ids = np.array([f"d{i:04d}" for i in range(len(images))])
    train_idx, test_idx = train_test_split(
        np.arange(len(images)), test_size=0.25, stratify=bunch.target, random_state=SPLIT_SEED
    )
    meta = BUILTIN_META[slug]
    test_idx = np.sort(test_idx)
    write_competition(dest, meta, list(ids[test_idx]), [str(bunch.target[i]) for i in test_idx])
    train_sorted = np.sort(train_idx)
    centroids = class_centroids(images[train_sorted], bunch.target[train_sorted], len(meta["labels"]))
    write_baseline(dest, meta, list(ids[test_idx]), centroids, images[test_idx])
    for folder, idx in (("train", np.sort(train_idx)), ("test", test_idx)):
        (dest / "data" / folder).mkdir(parents=True, exist_ok=True)
        for i in idx:
            _save_png(images[i], dest / "data" / folder / f"{ids[i]}.png")
    write_csv(dest / "data" / "train.csv", ["id", "label"], ((ids[i], bunch.target[i]) for i in np.sort(train_idx)))
    if meta.get("code_competition"):
        hide_test_set(dest)


# --- thu-deep-learning: SYNTHETIC 64x64 RGB, 100 classes, class folders of JPEGs ---------------------
# No tiny-image data set is reachable offline, so classes are drawn: 10 shapes x 10 hue bands.
# Neighbouring hue bands overlap under colour jitter and a distractor shape shares each image,
# so a good model lands well above chance (1%) but below 100%.

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring", "bar", "star", "pentagon", "arrow")
HUE_BANDS = 10


def _shape_polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]] | None:
    def rot(points):
        ca, sa = math.cos(angle), math.sin(angle)
        return [(cx + x * ca - y * sa, cy + x * sa + y * ca) for x, y in points]

    if shape == "square":
        return rot([(-r, -r), (r, -r), (r, r), (-r, r)])
    if shape == "triangle":
        return rot([(r * math.cos(a), r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)])
    if shape == "diamond":
        return rot([(0, -r), (0.6 * r, 0), (0, r), (-0.6 * r, 0)])
    if shape == "cross":
        w = r / 3
        return rot([(-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r), (-w, w), (-r, w), (-r, -w), (-w, -w)])
    if shape == "bar":
        return rot([(-r, -r / 4), (r, -r / 4), (r, r / 4), (-r, r / 4)])
    if shape == "star":
        return rot([((r if k % 2 == 0 else r / 2.5) * math.cos(k * math.pi / 5 - math.pi / 2),
                     (r if k % 2 == 0 else r / 2.5) * math.sin(k * math.pi / 5 - math.pi / 2)) for k in range(10)])
    if shape == "pentagon":
        return rot([(r * math.cos(k * 2 * math.pi / 5 - math.pi / 2), r * math.sin(k * 2 * math.pi / 5 - math.pi / 2)) for k in range(5)])
    if shape == "arrow":
        return rot([(-r, -r / 4), (0, -r / 4), (0, -r), (r, 0), (0, r), (0, r / 4), (-r, r / 4)])
    return None  # circle and ring are ellipses


def _hsv_to_rgb(h: float, s: float, v: float) -> tuple[int, int, int]:
    import colorsys

    return tuple(int(255 * c) for c in colorsys.hsv_to_rgb(h % 1.0, s, v))


def draw_synthetic_image(class_index: int, rng: np.random.Generator) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFilter

    size = 64
    shape, band = SHAPES[class_index // HUE_BANDS], class_index % HUE_BANDS
    # Background: a random two-colour gradient plus noise, so colour alone does not give the class away.
    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0, 1, size)[None, :, None] if rng.random() < 0.5 else np.linspace(0, 1, size)[:, None, None]
    background = (c0 * (1 - t) + c1 * t) * np.ones((size, size, 1))
    background = np.clip(background * 0.6 + rng.normal(0, 18, (size, size, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(background)
    draw = ImageDraw.Draw(image)

    def draw_shape(which: str, hue: float, radius: float) -> None:
        cx, cy = rng.uniform(radius, size - radius, 2)
        colour = _hsv_to_rgb(hue, rng.uniform(0.55, 1.0), rng.uniform(0.55, 1.0))
        polygon = _shape_polygon(which, cx, cy, radius, rng.uniform(0, 2 * math.pi))
        if polygon is not None:
            draw.polygon(polygon, fill=colour)
        elif which == "circle":
            draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=colour)
        else:
            draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], outline=colour, width=max(2, int(radius / 3)))

    # A smaller distractor of a random other shape and colour, drawn first so the class shape is on top.
    draw_shape(SHAPES[rng.integers(len(SHAPES))], rng.random(), rng.uniform(5, 9))
    # Hue jitter of +-0.7 band widths makes neighbouring bands overlap: an irreducible error.
    hue = (band + 0.5 + rng.uniform(-0.7, 0.7)) / HUE_BANDS
    draw_shape(shape, hue, rng.uniform(11, 20))
    image = image.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0, 0.8)))
    return np.asarray(image)


def build_thu_deep_learning(dest: Path, train_per_class: int = 100, test_per_class: int = 20) -> None:
    from PIL import Image

    rng = np.random.default_rng(SPLIT_SEED)
    meta = BUILTIN_META["thu-deep-learning"]
    labels = meta["labels"]
    test_ids, test_labels, test_images = [], [], []
    serial = 0
    centroids = np.zeros((len(labels), 64 * 64 * 3), dtype=np.float32)  # for the benchmark
    for class_index, label in enumerate(labels):
        (dest / "data" / "train" / label).mkdir(parents=True, exist_ok=True)
        for _ in range(train_per_class):
            image = draw_synthetic_image(class_index, rng)
            Image.fromarray(image).save(dest / "data" / "train" / label / f"t{serial:06d}.jpg", quality=90)
            centroids[class_index] += image.reshape(-1).astype(np.float32) / 255 / train_per_class
            serial += 1
        for _ in range(test_per_class):
            test_images.append(draw_synthetic_image(class_index, rng))
            test_labels.append(label)
    # Shuffle the test set so ids carry no label information.
    order = rng.permutation(len(test_images))
    (dest / "data" / "test").mkdir(parents=True, exist_ok=True)
    for position, source in enumerate(order):
        sample_id = f"x{position:05d}"
        test_ids.append(sample_id)
        Image.fromarray(test_images[source]).save(dest / "data" / "test" / f"{sample_id}.jpg", quality=90)
    write_competition(dest, meta, test_ids, [test_labels[s] for s in order])
    write_baseline(dest, meta, test_ids, centroids, np.stack([test_images[s] for s in order]))


BUILTIN_META: dict[str, dict] = {
    "fashion-mnist": _meta(
        "fashion-mnist", "Fashion-MNIST (course-style)", [str(i) for i in range(10)],
        "Classify 28x28 grey clothing images into 10 classes. Real Fashion-MNIST; test labels hidden."),
    "fashion-mnist-logloss": _meta(
        "fashion-mnist-logloss", "Fashion-MNIST, scored by log loss", [str(i) for i in range(10)],
        "Real Fashion-MNIST; submit one probability column per class (class_0 ... class_9), each row summing "
        "to 1. Scored by multi-class log loss (lower is better), probabilities clipped to [1e-15, 1 - 1e-15].",
        metric="log_loss"),
    "fashion-mnist-imbalanced": _meta(
        "fashion-mnist-imbalanced", "Fashion-MNIST with rare classes, scored by macro-F1", [str(i) for i in range(10)],
        "Real Fashion-MNIST with a long tail: the most common class keeps all its images, the rarest 1.5%, in "
        "training and test alike. Scored by macro-averaged F1, so each rare class counts as much as a common one.",
        metric="f1_macro"),
    "fashion-mnist-code": _meta(
        "fashion-mnist-code", "Fashion-MNIST, a code competition", [str(i) for i in range(10)],
        "Fashion-MNIST's test set seen only by notebooks: the download holds the first 20 test images; a "
        "kernel with this competition attached reads all 10,000 from /kaggle/input/fashion-mnist-code/ and "
        "its submission.csv is scored. Same ids, labels and public/private split as fashion-mnist.",
        code_competition=True),
    "digits": _meta(
        "digits", "Digits 8x8 (tiny)", [str(i) for i in range(10)],
        "scikit-learn's 1,797 handwritten 8x8 digits as PNG files; for fast end-to-end runs."),
    "digits-code": _meta(
        "digits-code", "Digits 8x8, a code competition", [str(i) for i in range(10)],
        "The digits competition's test set seen only by notebooks (the download holds its first 20 images); "
        "same ids, labels and public/private split as digits.", code_competition=True),
    "digit-recognizer-replica": _meta(
        "digit-recognizer-replica", "digit-recognizer, replicated (Fashion-MNIST pixels)", [str(i) for i in range(10)],
        "A REPLICA of Kaggle's digit-recognizer layout, built from real Fashion-MNIST pixels: train.csv holds a "
        "label and 784 pixel columns, test.csv the pixels only, and submissions list ImageId (from 1) and Label. "
        "12,000 training and 4,000 test images; scored by accuracy.", columns=("ImageId", "Label")),
    "dogs-vs-cats-replica": _meta(
        "dogs-vs-cats-replica", "dogs-vs-cats-redux, replicated (Fashion-MNIST pixels)", ["cat", "dog"],
        "A REPLICA of Kaggle's dogs-vs-cats-redux layout, built from real Fashion-MNIST pixels (pullovers are "
        "the cats, coats the dogs): the download holds train.zip (train/cat.0.jpg ... train/dog.N.jpg, the label "
        "only in the file name) and test.zip (test/1.jpg ...), RGB JPEGs of sizes from 40 to 160 pixels a side. "
        "Submit `id,label` with label the probability of a dog; scored by log loss. 6,000 training and 2,000 "
        "test images.", metric="log_loss", positive_column=True),
    "aerial-cactus-replica": _meta(
        "aerial-cactus-replica", "aerial-cactus-identification, replicated (Fashion-MNIST pixels)", ["0", "1"],
        "A REPLICA of Kaggle's aerial-cactus-identification layout, built from real Fashion-MNIST pixels (shirts "
        "have a cactus, T-shirts do not; 3 in 4 have one): train.csv lists `id` (the file name) and `has_cactus`; "
        "train.zip and test.zip inside the download hold 32x32 RGB JPEGs. Submit `id,has_cactus` with the "
        "probability of a cactus; scored by ROC AUC. 8,000 training and 1,334 test images.",
        metric="roc_auc", columns=("id", "has_cactus"), positive_column=True),
    "plant-seedlings-replica": _meta(
        "plant-seedlings-replica", "plant-seedlings-classification, replicated (Fashion-MNIST pixels)", SEEDLING_NAMES,
        "A REPLICA of Kaggle's plant-seedlings-classification layout, built from real Fashion-MNIST pixels: one "
        "folder of PNGs per species (names with spaces, Fashion-MNIST's ten classes in order), 49 to 160 pixels a "
        "side, 220 to 650 a class; test/ flat. Submit `file,species`; scored by micro-averaged F1. 4,110 training "
        "and 800 test images.", metric="f1_micro", columns=("file", "species")),
    "aptos-replica": _meta(
        "aptos-replica", "aptos2019-blindness-detection, replicated (Fashion-MNIST pixels)", [str(i) for i in range(5)],
        "A REPLICA of Kaggle's aptos2019-blindness-detection layout, built from real Fashion-MNIST pixels (its "
        "classes 0-4 are the grades): train.csv (`id_code`, `diagnosis`), train_images/ and test_images/ of RGB "
        "PNGs 300 to 640 pixels a side, half of them grade 0. Submit `id_code,diagnosis`; scored by quadratic "
        "weighted kappa. 1,500 training and 500 test images.", metric="quadratic_weighted_kappa",
        columns=("id_code", "diagnosis")),
    "thu-deep-learning": _meta(
        "thu-deep-learning", "Tiny image challenge (SYNTHETIC stand-in)",
        [f"c{i:03d}" for i in range(len(SHAPES) * HUE_BANDS)],
        "SYNTHETIC: procedurally drawn 64x64 RGB shapes, 100 classes (10 shapes x 10 hue bands). "
        "Stands in for the course's thu-deep-learning competition, which cannot be reached offline.",
        synthetic=True),
}

BUILTIN_META.update({
    "fashion-mosaic-tags": _meta(
        "fashion-mosaic-tags", "planet-understanding-the-amazon-from-space, replicated (Fashion-MNIST mosaics)",
        MOSAIC_TAGS,
        "A multi-label REPLICA of planet-understanding-the-amazon-from-space's layout, built from real "
        "Fashion-MNIST pixels: each 56x56 image is a 2x2 mosaic of garments (1 to 4 cells filled), tagged with "
        "the garments it holds. train_v2.csv lists `image_name` and `tags` (separated by spaces); train-jpg.zip "
        "and test-jpg.zip hold the JPEGs. Submit `image_name,tags`; scored by the mean F2 score per image. "
        "10,000 training and 4,000 test images.",
        metric={"name": "f_beta_samples", "beta": 2}, columns=("image_name", "tags")),
    "fashion-mosaic-auc": _meta(
        "fashion-mosaic-auc", "Fashion-MNIST mosaics, scored by mean column-wise AUC", MOSAIC_TAGS,
        "A multi-label REPLICA of the medical competitions' layout (one probability column per finding), built "
        "from real Fashion-MNIST pixels: the images of fashion-mosaic-tags as PNGs in train/ and test/, "
        "train.csv with `id` and one 0/1 column per garment. Submit `id` and one probability column per "
        "garment; scored by the mean column-wise ROC AUC. 10,000 training and 4,000 test images.",
        metric="mean_column_auc", columns=("id", "tags")),
})

BUILDERS: dict[str, Callable[[Path], None]] = {
    "fashion-mnist": build_fashion_mnist,
    "fashion-mnist-logloss": lambda dest: build_fashion_mnist(dest, "fashion-mnist-logloss"),
    "fashion-mnist-imbalanced": lambda dest: build_fashion_mnist(dest, "fashion-mnist-imbalanced"),
    "fashion-mnist-code": lambda dest: build_fashion_mnist(dest, "fashion-mnist-code"),
    "digits": build_digits,
    "digits-code": lambda dest: build_digits(dest, "digits-code"),
    "thu-deep-learning": build_thu_deep_learning,
    "digit-recognizer-replica": build_digit_recognizer_replica,
    "dogs-vs-cats-replica": build_dogs_vs_cats_replica,
    "aerial-cactus-replica": build_aerial_cactus_replica,
    "plant-seedlings-replica": build_plant_seedlings_replica,
    "aptos-replica": build_aptos_replica,
    "fashion-mosaic-tags": lambda dest: build_fashion_mosaic(dest, "fashion-mosaic-tags"),
    "fashion-mosaic-auc": lambda dest: build_fashion_mosaic(dest, "fashion-mosaic-auc"),
}
