"""What a downloaded competition's files say about it, for `make init`: the layout, the id and label
columns, the classes and their counts, the images' formats, channels and sizes, and a working size.

`guess(raw)` only reads: CSV headers and columns, folder listings, image headers (and the pixels of a
few images, to tell grey stored as RGB). What it cannot tell is a `Question` naming the YAML key to fill
and the choices, never a guess passed off as fact.
"""
from __future__ import annotations

import collections
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipelines.stages.readers import IMAGE_SUFFIXES, natural_order

SAMPLE_SUBMISSION = re.compile(r"sample_?submission.*\.csv$", re.IGNORECASE)
TRAIN_TABLES = ("train.csv", "train_labels.csv", "trainlabels.csv", "labels.csv")
VERSIONED_TRAIN_TABLE = re.compile(r"train[_-]?v\d+\.csv$", re.IGNORECASE)  # planet's train_v2.csv
LABEL_NAMES = ("label", "labels", "target", "class", "category", "diagnosis", "species", "y")
PIXEL_COLUMN = re.compile(r"^([A-Za-z_]+?)(\d+)$")
SAMPLED_IMAGES = 300  # image headers read for the size distribution (a seeded, spread-out sample)
GREY_TOLERANCE = 8  # JPEG noise between the channels of a grey image saved as RGB
KEEP_SIDE = 64  # images all of one size up to this side are kept as they are; others are resized


@dataclass
class Question:
    key: str  # the YAML key to fill
    why: str  # what could not be told, and the choices


@dataclass
class Draft:
    """What the files say, as spec fields (layout, columns, image) and as lines for people (`found`)."""

    layout: dict = field(default_factory=dict)
    id_column: str = "id"
    label_column: str = "label"
    submission_id_column: str | None = None
    submission_label_column: str | None = None
    classes: list[str] = field(default_factory=list)
    class_counts: list[int] = field(default_factory=list)  # images of each class (multi-label: holding each label)
    task: str = "single_label"
    label_format: str | None = None  # multi-label: `tags` (separated by spaces) or `columns` (one 0/1 column a label)
    image: dict = field(default_factory=dict)
    prediction_columns: list[str] = field(default_factory=list)
    found: list[str] = field(default_factory=list)
    questions: list[Question] = field(default_factory=list)


def _header(path: Path) -> list[str]:
    with open(path, encoding="utf-8", errors="replace") as fh:
        return [cell.strip() for cell in fh.readline().rstrip("\r\n").split(",")]


def _table(path: Path):
    import pandas as pd

    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _image_folders(raw: Path) -> dict[Path, list[Path]]:
    """Every folder holding image files, with its images (sorted)."""
    folders: dict[Path, list[Path]] = collections.defaultdict(list)
    for path in sorted(raw.rglob("*")):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            folders[path.parent].append(path)
    return dict(folders)


def _matches(ids: list[str], images: list[Path]) -> tuple[int, str]:
    """How many of `ids` name an image of the folder, and the file name pattern they fit."""
    stems = {p.stem for p in images}
    names = {p.name for p in images}
    by_stem, by_name = sum(i in stems for i in ids), sum(i in names for i in ids)
    if by_name >= by_stem:
        return by_name, "{id}"
    suffixes = collections.Counter(p.suffix for p in images)
    return by_stem, "{id}" + suffixes.most_common(1)[0][0]


def _relative(raw: Path, folder: Path) -> str:
    return folder.relative_to(raw).as_posix() or "."


def _pixel_layout(raw: Path, train: Path, draft: Draft) -> bool:
    """digit-recognizer: a label column beside pixel0..pixelN."""
    header = _header(train)
    prefixes = collections.Counter(m.group(1) for m in map(PIXEL_COLUMN.match, header) if m)
    if not prefixes:
        return False
    prefix, count = prefixes.most_common(1)[0]
    side = round((count / 3) ** 0.5) if round((count / 3) ** 0.5) ** 2 * 3 == count else round(count ** 0.5)
    channels = 3 if side * side * 3 == count else 1
    if count < 64 or side * side * channels != count:
        return False
    others = [c for c in header if not (PIXEL_COLUMN.match(c) and PIXEL_COLUMN.match(c).group(1) == prefix)]
    test = next((p for p in (raw / "test.csv", raw / "Test.csv") if p.is_file()), None)
    if test is None:
        draft.questions.append(Question("layout.test_csv", f"{train.name} holds pixels but no test.csv was found"))
        return True
    draft.layout = {"kind": "pixel_csv", "train_csv": train.name, "test_csv": test.name, "pixel_prefix": prefix}
    draft.image = {"height": side, "width": side, "channels": channels}
    draft.found.append(f"layout: pixel_csv ({train.name}: {count} columns {prefix}0..{prefix}{count - 1}, "
                       f"{side}x{side}x{channels})")
    label = _pick_label(others, draft)
    if label is not None:
        draft.label_column = label
        _classes_from(_table(train)[label], draft, f"{train.name} column '{label}'")
    return True


def _pick_label(columns: list[str], draft: Draft) -> str | None:
    if len(columns) == 1:
        return columns[0]
    wanted = {c.lower() for c in draft.prediction_columns} | set(LABEL_NAMES)
    named = [c for c in columns if c.lower() in wanted]
    if named:
        return named[0]
    draft.questions.append(Question("label_column", f"which column holds the label? one of: {', '.join(columns)}"))
    return None


def _classes_from(labels, draft: Draft, where: str) -> None:
    counts = collections.Counter(str(v).strip() for v in labels)
    draft.classes = natural_order(counts)
    draft.class_counts = [counts[c] for c in draft.classes]
    shown = ", ".join(draft.classes[:8]) + (", ..." if len(draft.classes) > 8 else "")
    draft.found.append(f"classes: {len(draft.classes)} from {where} ({shown}); "
                       f"{min(draft.class_counts):,}..{max(draft.class_counts):,} images a class")


def _csv_images(raw: Path, train: Path, folders: dict[Path, list[Path]], draft: Draft) -> bool:
    table = _table(train)
    best = (0, None, None, None)  # (matches, column, folder, filename)
    for column in table.columns:
        ids = table[column].head(200).str.strip().tolist()
        for folder, images in folders.items():
            hits, filename = _matches(ids, images)
            if hits > best[0]:
                best = (hits, column, folder, filename)
    hits, id_column, folder, filename = best
    if not hits or hits < 0.9 * min(200, len(table)):
        return False
    draft.id_column = id_column
    if draft.layout.get("filename", filename) != filename:
        draft.questions.append(Question("layout.filename", f"training files are named '{filename}' but test files "
                                        f"'{draft.layout['filename']}'; kpipe takes one pattern for both"))
    draft.layout.update({"kind": "csv_images", "train_csv": train.name, "train_dir": _relative(raw, folder),
                         "filename": filename})
    draft.found.append(f"layout: csv_images ({train.name} names the images in {_relative(raw, folder)}/ by "
                       f"'{id_column}', files '{filename}')")
    _labels_of(table, id_column, train.name, draft)
    return True


def _labels_of(table, id_column: str, where: str, draft: Draft) -> None:
    """The label column and classes of a train.csv; a multi-label one is told by its cells: labels separated
    by spaces in one column (planet's tags), or two or more 0/1 columns that some rows hold more or fewer
    than one of, or that the sample submission asks a probability for (the medical competitions)."""
    others = [c for c in table.columns if c != id_column]
    bits = [c for c in others if set(table[c].str.strip()) <= {"0", "1"}]
    if len(bits) >= 2 and len(bits) == len(others):
        counts = table[bits].apply(lambda column: column.str.strip() == "1").sum(axis=1)
        if (counts != 1).any() or set(bits) <= set(draft.prediction_columns):
            draft.task, draft.label_format = "multi_label", "columns"
            draft.classes = bits
            draft.class_counts = [int((table[c].str.strip() == "1").sum()) for c in bits]
            draft.found.append(f"labels: multi-label, one 0/1 column per label in {where} ({len(bits)}: "
                               f"{', '.join(bits[:8])}{', ...' if len(bits) > 8 else ''}); "
                               f"{int(counts.min())}..{int(counts.max())} labels an image")
            return
    label = _pick_label(others, draft)
    if label is None:
        return
    draft.label_column = label
    cells = table[label].str.split()
    if (cells.str.len() > 1).mean() >= 0.01:  # a label set per image, its labels separated by spaces
        draft.task, draft.label_format = "multi_label", "tags"
        counts = collections.Counter(tag for tags in cells for tag in set(tags))
        draft.classes = natural_order(counts)
        draft.class_counts = [counts[c] for c in draft.classes]
        draft.found.append(f"labels: multi-label, {len(draft.classes)} labels separated by spaces in {where} column "
                           f"'{label}' ({', '.join(draft.classes[:8])}{', ...' if len(draft.classes) > 8 else ''}); "
                           f"{int(cells.str.len().min())}..{int(cells.str.len().max())} labels an image")
        return
    _classes_from(table[label], draft, f"{where} column '{label}'")


def _class_folders(raw: Path, folders: dict[Path, list[Path]], draft: Draft) -> bool:
    parents = collections.defaultdict(list)
    for folder in folders:
        parents[folder.parent].append(folder)
    candidates = [(parent, subs) for parent, subs in parents.items() if len(subs) >= 2 and parent != raw]
    if not candidates:
        return False
    parent, subs = max(candidates, key=lambda item: sum(len(folders[s]) for s in item[1]))
    draft.layout.update({"kind": "class_folders", "train_dir": _relative(raw, parent)})
    draft.found.append(f"layout: class_folders ({len(subs)} class folders in {_relative(raw, parent)}/)")
    _classes_from([s.name for s in subs for _ in folders[s]], draft, f"the folder names in {_relative(raw, parent)}/")
    return True


def _file_labels(raw: Path, folders: dict[Path, list[Path]], test_folder: Path | None, draft: Draft) -> bool:
    for folder, images in sorted(folders.items(), key=lambda item: -len(item[1])):
        if folder == test_folder:
            continue
        parts = [p.name.split(".") for p in images]
        if not all(len(part) >= 3 for part in parts):
            continue
        labels = collections.Counter(part[0] for part in parts)
        if 2 <= len(labels) <= max(2, len(images) // 10):
            suffix = collections.Counter(p.suffix for p in images).most_common(1)[0][0]
            draft.layout.update({"kind": "file_labels", "train_dir": _relative(raw, folder),
                                 "train_filename": "{label}.{n}" + suffix})
            draft.found.append(f"layout: file_labels (the label in each file name in {_relative(raw, folder)}/, "
                               f"like '{images[0].name}')")
            _classes_from([part[0] for part in parts], draft, "the file names")
            return True
    return False


def _test_images(raw: Path, sample_ids: list[str], folders: dict[Path, list[Path]], draft: Draft) -> Path | None:
    best = (0, None, None)
    for folder, images in folders.items():
        hits, filename = _matches(sample_ids[:200], images)
        if hits > best[0]:
            best = (hits, folder, filename)
    hits, folder, filename = best
    if folder is None or hits < 0.9 * min(200, len(sample_ids)):
        return None
    draft.layout.update({"filename": filename, "test_dir": _relative(raw, folder)})
    return folder


def _image_shape(paths: list[Path], draft: Draft) -> None:
    """Formats, channels and the size distribution from image headers; a working size and policy."""
    from PIL import Image

    step = max(1, len(paths) // SAMPLED_IMAGES)
    sample = paths[::step][:SAMPLED_IMAGES]
    sizes, formats, modes, grey = [], collections.Counter(), collections.Counter(), 0
    for i, path in enumerate(sample):
        with Image.open(path) as img:
            sizes.append((img.height, img.width))
            formats[img.format or path.suffix] += 1
            modes[img.mode] += 1
            if i < 30 and img.mode in ("RGB", "RGBA", "P"):
                small = np.asarray(img.convert("RGB").reduce(max(1, min(img.size) // 32)), dtype=np.int16)
                grey += int(np.abs(small - small[..., :1]).max()) <= GREY_TOLERANCE
    colour_modes = [m for m in modes if m in ("RGB", "RGBA", "P", "CMYK", "YCbCr")]
    checked = min(30, sum(modes[m] for m in colour_modes))
    channels = 3 if colour_modes and grey < checked else 1
    heights, widths = [h for h, _ in sizes], [w for _, w in sizes]
    shorter = statistics.median(min(s) for s in sizes)
    uniform = len(set(sizes)) == 1
    if uniform and max(sizes[0]) <= KEEP_SIDE:
        height, width, resize = sizes[0][0], sizes[0][1], "keep"
    else:
        side = 32 if shorter <= 48 else 64
        height, width, resize = side, side, "stretch"
    draft.image = {"height": height, "width": width, "channels": channels, "resize": resize}
    grey_note = " (grey stored as RGB: read as one channel)" if colour_modes and channels == 1 else ""
    draft.found.append(f"images: {', '.join(f'{n} {k}' for k, n in formats.most_common())} of {len(sample)} sampled; "
                       f"modes {', '.join(sorted(modes))}{grey_note}; heights {min(heights)}..{max(heights)}, widths "
                       f"{min(widths)}..{max(widths)} (median shorter side {shorter:g})")
    why = "all one size" if resize == "keep" else "sizes vary" if not uniform else "large for these CPUs"
    draft.found.append(f"image: working size {height}x{width}x{channels}, resize: {resize} ({why}; other policies: "
                       "centre_crop, pad)")


def guess(raw: Path) -> Draft:
    """What the downloaded files in `raw` say about the competition."""
    draft = Draft()
    samples = sorted(p for p in raw.rglob("*.csv") if SAMPLE_SUBMISSION.search(p.name))
    if not samples:
        draft.questions.append(Question("layout.sample_submission", "no sample submission CSV in the download"))
        return draft
    sample = samples[0]
    header = _header(sample)
    sample_ids = _table(sample)[header[0]].str.strip().tolist()
    draft.prediction_columns = header[1:]
    draft.found.append(f"sample submission: {_relative(raw, sample)} ({len(sample_ids):,} rows; columns "
                       f"{', '.join(header)})")
    folders = _image_folders(raw)
    tables = [p for p in sorted(raw.glob("*.csv")) if p.name.lower() in TRAIN_TABLES]
    tables += [p for p in sorted(raw.glob("*.csv")) if VERSIONED_TRAIN_TABLE.fullmatch(p.name)]
    train = tables[0] if tables else None
    if (raw / "train_images.npy").is_file() and train is not None:
        draft.layout = {"kind": "npy", "train_csv": train.name}
        draft.found.append("layout: npy (train_images.npy, test_images.npy)")
        shape = np.load(raw / "train_images.npy", mmap_mode="r").shape
        draft.image = {"height": shape[1], "width": shape[2], "channels": shape[3] if len(shape) == 4 else 1}
        _labels_of(_table(train), "id", train.name, draft)
    elif train is not None and _pixel_layout(raw, train, draft):
        pass
    else:
        test_folder = _test_images(raw, sample_ids, folders, draft)
        placed = ((train is not None and _csv_images(raw, train, folders, draft))
                  or _class_folders(raw, folders, draft) or _file_labels(raw, folders, test_folder, draft))
        if not placed:
            draft.questions.append(Question("layout", "found no training labels: no train.csv naming image files, no "
                                            "class folders, no labels in file names; one of: npy, csv_images, "
                                            "class_folders, pixel_csv, file_labels"))
        if test_folder is None:
            draft.questions.append(Question("layout.test_dir", f"no folder holds images named by the ids of {sample.name}"))
        train_dir = draft.layout.get("train_dir")
        train_images = [p for folder, images in folders.items() if train_dir
                        and (folder == raw / train_dir or raw / train_dir in folder.parents) for p in images]
        if train_images:
            _image_shape(train_images, draft)
    draft.layout["sample_submission"] = _relative(raw, sample)
    _columns(header, draft)
    return draft


def _columns(header: list[str], draft: Draft) -> None:
    """The submission's column names where they differ from the training data's."""
    kind = draft.layout.get("kind")
    if kind in ("class_folders", "file_labels"):  # no train.csv: the submission's names are the only ones
        draft.id_column = header[0]
        if len(header) == 2:
            draft.label_column = header[1]
        return
    if header[0] != draft.id_column:
        draft.submission_id_column = header[0]
    if draft.label_format == "columns":  # the submission's columns are the labels
        return
    if len(header) == 2 and header[1] != draft.label_column:
        draft.submission_label_column = header[1]
