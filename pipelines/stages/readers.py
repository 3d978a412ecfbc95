"""Read a competition's raw files, in any of the supported layouts, into one canonical in-memory form.

Each layout has one reader, registered by the `kind` the spec's layout names. Every problem with the
data is a one-line DataError naming the file and, where there is one, the row.
"""
from __future__ import annotations

import re
import string
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
from tqdm import tqdm

from competition.errors import DataError
from competition.spec import CompetitionSpec
from pipelines.recipe.image_fit import fit_image

if TYPE_CHECKING:
    import pandas as pd

# Where a reader puts N×H×W×C uint8 images: np.empty (memory), or prepare's arrays on disk for data larger
# than memory (stages/prepare.py: image_allocator).
Allocate = Callable[[tuple[int, ...]], np.ndarray]
COPY_CHUNK = 4096  # rows copied at a time into an allocated array

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
MAX_CSV_FIELD_CHARS = 4096  # ids and labels are short; a longer cell is a broken or hostile file
MAX_IMAGE_FILE_BYTES = 64 << 20


@dataclass
class CanonicalData:
    """Decoded images as uint8 N×H×W×C, labels as indices into `classes` (the spec's list, or the labels
    found in the data when it says `auto`), ids as text. Multi-label (`task: multi_label`): labels as a
    uint8 N×classes matrix, 1 where the image holds that label."""

    train_images: np.ndarray
    train_labels: np.ndarray
    train_ids: list[str]
    test_images: np.ndarray
    test_ids: list[str]
    classes: list[str]
    test_labels: np.ndarray | None = None  # `source: dataset` only: the held-out rows' labels, scored locally


def _require(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DataError(f"{path}: missing ({what}); re-run the download stage or check the layout in the competition YAML")
    return path


def read_table(path: Path, required: list[str], what: str) -> pd.DataFrame:
    """A CSV as text columns, with the required columns present and no empty cells in them."""
    import pandas as pd  # here: 0.4 s to import, and only preparing data and reading CSV input need it

    _require(path, what)
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: empty file; it needs a header row ({', '.join(required)}) and one row per image") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8 CSV") from None
    except (pd.errors.ParserError, ValueError, OverflowError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path}: not a readable CSV ({first_line[:200]})") from None
    if table.empty:
        raise DataError(f"{path}: a header but no rows; it must list every image ({what})")
    for column in table.columns:
        too_long = table.index[table[column].str.len() > MAX_CSV_FIELD_CHARS]
        if len(too_long):
            raise DataError(f"{path} row {too_long[0] + 2}: column '{column}' holds "
                            f"{len(table[column][too_long[0]]):,} characters (limit {MAX_CSV_FIELD_CHARS:,}); "
                            "is the file broken?")
    for column in required:
        if column not in table.columns:
            raise DataError(f"{path}: missing column '{column}' (found: {', '.join(map(str, table.columns)) or 'none'}); "
                            "fix the file or `id_column`/`label_column` in the competition YAML")
        empty = table.index[table[column].str.strip() == ""]
        if len(empty):
            raise DataError(f"{path} row {empty[0] + 2}: empty '{column}'")
    return table


def check_unique_ids(ids: pd.Series, path: Path) -> None:
    duplicated = ids[ids.duplicated(keep="first")]
    if len(duplicated):
        row = duplicated.index[0]
        first = ids.index[ids == ids[row]][0]
        raise DataError(f"{path} row {row + 2}: duplicate id '{ids[row]}' (first at row {first + 2})")


def natural_order(labels) -> list[str]:
    """The distinct labels in a stable order: numbers by value (`2` before `10`), else as text."""
    distinct = sorted(set(labels))
    try:
        return sorted(distinct, key=lambda label: (float(label), label))
    except ValueError:
        return distinct


def class_list(spec: CompetitionSpec, found, where: Path) -> list[str]:
    """The spec's classes, or with `classes: auto` the labels `found` in the training data."""
    if spec.classes != "auto":
        return list(spec.classes)
    classes = natural_order(found)
    if len(classes) < 2:
        raise DataError(f"{where}: the training data holds {len(classes)} distinct label(s) "
                        f"({', '.join(classes) or 'none'}); a classifier needs at least 2")
    return classes


def label_indices(labels: pd.Series, classes: list[str], spec: CompetitionSpec, path: Path) -> np.ndarray:
    index_of = {label: i for i, label in enumerate(classes)}
    unknown = labels[~labels.isin(index_of)]
    if len(unknown):
        row = unknown.index[0]
        raise DataError(f"{path} row {row + 2}: label '{unknown[row]}' is not in the class list of competition/{spec.name}.yaml")
    return labels.map(index_of).to_numpy(dtype=np.int64)


def label_text(labels: np.ndarray, classes: list[str]) -> str:
    """One row's labels as train.csv-style text: the class, or (multi-label) the labels separated by spaces."""
    if np.ndim(labels) == 0:
        return classes[int(labels)]
    return " ".join(classes[c] for c in np.flatnonzero(labels))


def label_counts(labels: np.ndarray, classes: int) -> np.ndarray:
    """Images of each class (multi-label: images holding each label)."""
    if labels.ndim == 2:
        return labels.sum(axis=0, dtype=np.int64)
    return np.bincount(labels, minlength=classes)


def _tag_sets(table: pd.DataFrame, spec: CompetitionSpec, path: Path) -> tuple[np.ndarray, list[str]]:
    """`label_format: tags`: the label column's labels, separated by spaces, as a 0/1 matrix."""
    if spec.label_column not in table.columns:
        raise DataError(f"{path}: missing column '{spec.label_column}' (found: {', '.join(map(str, table.columns))}); "
                        "fix the file or `label_column` in the competition YAML")
    sets = [cell.split() for cell in table[spec.label_column]]
    empty = [row for row, tags in enumerate(sets) if not tags]
    if empty and not spec.metric.allow_empty:
        raise DataError(f"{path} row {empty[0] + 2}: no labels in '{spec.label_column}'; every image needs at least one "
                        "(or set `allow_empty: true` in the metric, where the competition allows an empty set)")
    classes = class_list(spec, [tag for tags in sets for tag in tags], path)
    index_of = {label: i for i, label in enumerate(classes)}
    matrix = np.zeros((len(sets), len(classes)), dtype=np.uint8)
    for row, tags in enumerate(sets):
        unknown = [tag for tag in tags if tag not in index_of]
        if unknown:
            raise DataError(f"{path} row {row + 2}: label '{unknown[0]}' is not in the class list of "
                            f"competition/{spec.name}.yaml")
        matrix[row, [index_of[tag] for tag in tags]] = 1
    return matrix, classes


def _label_columns(table: pd.DataFrame, spec: CompetitionSpec, path: Path) -> tuple[np.ndarray, list[str]]:
    """`label_format: columns`: one 0/1 column per label, named as the label (with `classes: auto`, every
    column but the id and the group column)."""
    others = [c for c in table.columns if c not in (spec.id_column, spec.folds.group_column)]
    classes = list(spec.classes) if spec.classes != "auto" else others
    if len(classes) < 2:
        raise DataError(f"{path}: {len(classes)} label column(s) besides '{spec.id_column}'; a multi-label competition "
                        "needs one 0/1 column per label")
    missing = [c for c in classes if c not in table.columns]
    if missing:
        raise DataError(f"{path}: no column '{missing[0]}' for the label of that name (columns: "
                        f"{', '.join(map(str, table.columns))[:200]}); fix `classes:` in competition/{spec.name}.yaml")
    cells = table[classes].apply(lambda column: column.str.strip())
    bad = ~cells.isin(["0", "1"])
    if bad.to_numpy().any():
        row, column = np.argwhere(bad.to_numpy())[0]
        raise DataError(f"{path} row {row + 2}: column '{classes[column]}' holds '{cells.iat[row, column][:40]}'; a label "
                        "column holds 0 or 1" + ("" if spec.classes != "auto" else
                                                 " (with `classes: auto` every column but the id is a label; list "
                                                 "`classes:` to leave others out)"))
    matrix = (cells.to_numpy() == "1").astype(np.uint8)
    if not spec.metric.allow_empty and not matrix.any(axis=1).all():
        row = int(np.flatnonzero(~matrix.any(axis=1))[0])
        raise DataError(f"{path} row {row + 2}: no label column is 1; every image needs at least one (or set "
                        "`allow_empty: true` in the metric)")
    return matrix, [str(c) for c in classes]


def read_labelled_ids(path: Path, spec: CompetitionSpec) -> tuple[list[str], np.ndarray, list[str]]:
    """(ids, label indices, classes) of a train.csv; multi-label: (ids, 0/1 label matrix, classes)."""
    if spec.task == "multi_label":
        table = read_table(path, [spec.id_column], "training labels")
        ids = table[spec.id_column].str.strip()
        check_unique_ids(ids, path)
        read = _tag_sets if spec.label_format == "tags" else _label_columns
        matrix, classes = read(table, spec, path)
        return ids.tolist(), matrix, classes
    table = read_table(path, [spec.id_column, spec.label_column], "training labels")
    ids = table[spec.id_column].str.strip()
    check_unique_ids(ids, path)
    labels = table[spec.label_column].str.strip()
    classes = class_list(spec, labels, path)
    return ids.tolist(), label_indices(labels, classes, spec, path), classes


def read_test_ids(path: Path, spec: CompetitionSpec) -> list[str]:
    if spec.source == "dataset" and not path.is_file():
        return []  # a dataset has no sample submission: its test rows are held out of the labelled ones
    table = read_table(path, [spec.submission_id], "sample submission: every test id")
    ids = table[spec.submission_id].str.strip()
    check_unique_ids(ids, path)
    return ids.tolist()


def load_image(path: Path, spec: CompetitionSpec, where: str, resize: bool = False,
               size_fix: str = "fix the file, or `image:` (its size, or `resize:`) in the competition YAML") -> np.ndarray:
    """One image file as uint8 H×W×C at the spec's working size and channels, brought there by the spec's
    `image.resize` policy (recipe/image_fit.py); with `keep`, `resize` (`make predict RESIZE=1`) stretches
    instead of refusing. Unreadable, a bomb, or the wrong size under `keep` is a DataError ending `size_fix`."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise DataError(f"{path}: missing image ({where})")
    if path.stat().st_size > MAX_IMAGE_FILE_BYTES:
        raise DataError(f"{path}: {path.stat().st_size:,} bytes, far more than an image here plausibly needs "
                        f"({where}); is it the right file?")
    shape = spec.image
    policy = "stretch" if resize and shape.resize == "keep" else shape.resize
    try:
        with warnings.catch_warnings():
            # Pillow refuses an image whose header promises more pixels than MAX_IMAGE_PIXELS before decoding
            # it, so a decompression bomb (a tiny file that decodes to gigabytes) costs nothing.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                return fit_image(img, shape.height, shape.width, shape.channels, policy)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"{path}: refused as a decompression bomb ({where}): {exc}") from None
    except ValueError as exc:
        if str(exc).startswith("image is "):
            raise DataError(f"{path}: {exc} ({where}); {size_fix}") from None
        raise DataError(f"{path}: unreadable image ({where}): {str(exc)[:200]}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, EOFError) as exc:
        raise DataError(f"{path}: unreadable image ({where}): {str(exc)[:200]}") from None


def empty_images(shape: tuple[int, ...]) -> np.ndarray:
    return np.empty(shape, dtype=np.uint8)


def load_images(paths: list[Path], spec: CompetitionSpec, where: list[str], desc: str,
                allocate: Allocate = empty_images, **options) -> np.ndarray:
    """`load_image` for each path (`options`: its resize and size_fix), into one N×H×W×C array from `allocate`."""
    out = allocate((len(paths), spec.image.height, spec.image.width, spec.image.channels))
    for i, path in enumerate(tqdm(paths, desc=desc, unit="img", mininterval=1.0, disable=len(paths) < 2000)):
        out[i] = load_image(path, spec, where[i], **options)
    return out


def as_nhwc(array: np.ndarray, spec: CompetitionSpec, path: Path, allocate: Allocate = empty_images) -> np.ndarray:
    if array.dtype != np.uint8:
        raise DataError(f"{path}: dtype {array.dtype}, expected uint8 images (0..255)")
    if array.ndim == 3:
        array = array[..., None]
    expected = (spec.image.height, spec.image.width, spec.image.channels)
    if array.ndim != 4 or array.shape[1:] != expected:
        raise DataError(f"{path}: array shape {array.shape}, expected N×{expected[0]}×{expected[1]}"
                        f"{'' if expected[2] == 1 else '×3'}; fix the file or `image:` in the competition YAML")
    out = allocate(array.shape)  # a copy, in chunks: the input may be a memory map of a file of any size
    for start in range(0, len(array), COPY_CHUNK):
        out[start:start + COPY_CHUNK] = array[start:start + COPY_CHUNK]
    return out


def open_npy(path: Path) -> np.ndarray:
    """The array memory-mapped, so that its header's dtype and shape can be checked before any data is
    copied; an unreadable file is one DataError."""
    try:
        return np.load(path, allow_pickle=False, mmap_mode="r")
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npy array ({str(exc)[:200]})") from None


def load_npy(path: Path, spec: CompetitionSpec, what: str, allocate: Allocate = empty_images) -> np.ndarray:
    _require(path, what)
    return as_nhwc(open_npy(path), spec, path, allocate)


# --- one reader per layout ---------------------------------------------------------------------------


def read_npy(spec: CompetitionSpec, raw: Path, allocate: Allocate = empty_images) -> CanonicalData:
    layout = spec.layout
    train_ids, train_labels, classes = read_labelled_ids(raw / layout.train_csv, spec)
    test_ids = read_test_ids(raw / layout.sample_submission, spec)
    train_images = load_npy(raw / layout.train_images, spec, "training images", allocate)
    test_images = load_npy(raw / layout.test_images, spec, "test images", allocate)
    for images, ids, array_name, csv_name in ((train_images, train_ids, layout.train_images, layout.train_csv),
                                              (test_images, test_ids, layout.test_images, layout.sample_submission)):
        if len(images) != len(ids):
            raise DataError(f"{raw / array_name}: {len(images)} images but {csv_name} has {len(ids)} rows; they must line up")
    return CanonicalData(train_images, train_labels, train_ids, test_images, test_ids, classes)


def image_paths(folder: Path, pattern: str, ids: list[str], table: str) -> list[Path]:
    """The file of each id in `folder` by the layout's `filename` pattern. Ids are data, never paths: one
    that would name a file elsewhere ('../x', 'a/b') is a DataError naming the row."""
    paths = []
    for row, sample_id in enumerate(ids):
        name = pattern.format(id=sample_id)
        if "/" in name or "\\" in name or "\0" in name or name in (".", ".."):
            raise DataError(f"{table} row {row + 2}: id {sample_id!r} would name a file outside {folder} ({name!r}); "
                            "ids are names of files in the image folder, never paths")
        paths.append(folder / name)
    return paths


def _test_images_by_id(spec: CompetitionSpec, raw: Path, test_ids: list[str], allocate: Allocate = empty_images) -> np.ndarray:
    """The sample submission's images, found by `filename` in the test folder (or folders: each image in
    one of them); an image no id names, or one name in two folders, is a DataError."""
    layout = spec.layout
    folders = [raw / folder for folder in layout.test_dirs]
    names = [p.name for p in image_paths(folders[0], layout.filename, test_ids, str(raw / layout.sample_submission))]
    found: dict[str, Path] = {}
    for folder in (f for f in folders if f.is_dir()):
        for path in folder.iterdir():
            if path.suffix.lower() in IMAGE_SUFFIXES:
                if path.name in found:
                    raise DataError(f"{path}: also in {found[path.name]}; a test image must be in one folder")
                found[path.name] = folder
    where_dirs = ", ".join(layout.test_dirs)
    if found and not set(names) & set(found):
        raise DataError(f"{folders[0]}: none of the {len(test_ids):,} ids of {layout.sample_submission} names one of the "
                        f"{len(found):,} images in {where_dirs} (id '{test_ids[0]}' would be '{names[0]}', a file there "
                        f"is '{sorted(found)[0]}'); check layout.filename and layout.test_dir")
    extra = sorted(set(found) - set(names))
    if extra:
        raise DataError(f"{found[extra[0]]}: {len(extra)} images are not listed in {layout.sample_submission}, e.g. "
                        f"'{extra[0]}'; test ids must match the sample submission")
    if not test_ids:  # a dataset without a sample submission: no unlabelled test images to read
        return np.empty((0, spec.image.height, spec.image.width, spec.image.channels), dtype=np.uint8)
    paths = [found.get(name, folders[0]) / name for name in names]
    where = [f"{layout.sample_submission} row {row + 2}, id '{i}'" for row, i in enumerate(test_ids)]
    return load_images(paths, spec, where, "test images", allocate)


def read_csv_images(spec: CompetitionSpec, raw: Path, allocate: Allocate = empty_images) -> CanonicalData:
    layout = spec.layout
    train_ids, train_labels, classes = read_labelled_ids(raw / layout.train_csv, spec)
    test_ids = read_test_ids(raw / layout.sample_submission, spec)
    paths = image_paths(raw / layout.train_dir, layout.filename, train_ids, str(raw / layout.train_csv))
    where = [f"{layout.train_csv} row {row + 2}, id '{i}'" for row, i in enumerate(train_ids)]
    train_images = load_images(paths, spec, where, "train images", allocate)
    return CanonicalData(train_images, train_labels, train_ids, _test_images_by_id(spec, raw, test_ids, allocate), test_ids,
                         classes)


def _unique_ids(paths: list[Path], ids: list[str]) -> None:
    first_path: dict[str, Path] = {}
    for path, sample_id in zip(paths, ids):
        if sample_id in first_path:
            raise DataError(f"{path}: duplicate id '{sample_id}' (also {first_path[sample_id]}); file names must be unique")
        first_path[sample_id] = path


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_class_folders(spec: CompetitionSpec, raw: Path, allocate: Allocate = empty_images) -> CanonicalData:
    layout = spec.layout
    train_dir = raw / layout.train_dir
    if not train_dir.is_dir():
        raise DataError(f"{train_dir}: missing (one sub-folder per class expected)")
    folders = sorted(p for p in train_dir.iterdir() if p.is_dir())
    classes = class_list(spec, [p.name for p in folders], train_dir)
    unknown = [p.name for p in folders if p.name not in classes]
    if unknown:
        raise DataError(f"{train_dir / unknown[0]}: folder name is not a class of competition/{spec.name}.yaml")
    paths, labels = [], []
    for class_index, label in enumerate(classes):
        images = _images_in(train_dir / label) if (train_dir / label).is_dir() else []
        if not images and spec.classes == "auto":
            raise DataError(f"{train_dir / label}: a class folder with no images; remove it or add its images")
        paths += images
        labels += [class_index] * len(images)
    if not paths:
        raise DataError(f"{train_dir}: no training images found in the class folders")
    ids = [path.stem for path in paths]
    _unique_ids(paths, ids)
    train_images = load_images(paths, spec, [f"class folder '{classes[c]}'" for c in labels], "train images", allocate)
    test_ids = read_test_ids(raw / layout.sample_submission, spec)
    return CanonicalData(train_images, np.array(labels, dtype=np.int64), ids, _test_images_by_id(spec, raw, test_ids, allocate),
                         test_ids, classes)


def file_name_pattern(pattern: str) -> re.Pattern:
    """`{label}.{n}.jpg` as a regular expression: `{label}` and `{n}` each the shortest text that lets the
    rest match (`cat.12.jpg`: cat, 12), the extension in any case."""
    parts = []
    for literal, field, _, _ in string.Formatter().parse(pattern):
        parts.append(re.escape(literal))
        if field == "label":
            parts.append(r"(?P<label>[^/\\]+?)")
        elif field == "n":
            parts.append(r"(?P<n>[^/\\]+?)")
    return re.compile("".join(parts) + r"\Z", re.IGNORECASE)


def read_file_labels(spec: CompetitionSpec, raw: Path, allocate: Allocate = empty_images) -> CanonicalData:
    layout = spec.layout
    train_dir = raw / layout.train_dir
    if not train_dir.is_dir():
        raise DataError(f"{train_dir}: missing (the training images, named like '{layout.train_filename}')")
    pattern = file_name_pattern(layout.train_filename)
    paths, found = [], []
    for path in _images_in(train_dir):
        match = pattern.match(path.name)
        if match is None:
            raise DataError(f"{path}: the name does not fit layout.train_filename '{layout.train_filename}' of "
                            f"competition/{spec.name}.yaml; fix the pattern or remove the file")
        paths.append(path)
        found.append(match["label"])
    if not paths:
        raise DataError(f"{train_dir}: no training images (named like '{layout.train_filename}')")
    classes = class_list(spec, found, train_dir)
    index_of = {label: i for i, label in enumerate(classes)}
    unknown = [(path, label) for path, label in zip(paths, found) if label not in index_of]
    if unknown:
        raise DataError(f"{unknown[0][0]}: label '{unknown[0][1]}' (from its name) is not in the class list of "
                        f"competition/{spec.name}.yaml")
    ids = [path.name.rsplit(".", 1)[0] for path in paths]
    _unique_ids(paths, ids)
    labels = np.array([index_of[label] for label in found], dtype=np.int64)
    train_images = load_images(paths, spec, [f"label '{label}' from its name" for label in found], "train images", allocate)
    test_ids = read_test_ids(raw / layout.sample_submission, spec)
    return CanonicalData(train_images, labels, ids, _test_images_by_id(spec, raw, test_ids, allocate), test_ids, classes)


MAX_PIXEL_CSV_BYTES = 4 << 30  # 4 GiB of text: about 1.6 million 28x28 images


def _pixel_columns(spec: CompetitionSpec) -> list[str]:
    count = spec.image.height * spec.image.width * spec.image.channels
    return [f"{spec.layout.pixel_prefix}{i}" for i in range(count)]


def read_pixel_rows(path: Path, spec: CompetitionSpec, what: str, extra: list[str]) -> tuple[np.ndarray, "pd.DataFrame"]:
    """The pixel columns of a CSV as uint8 N×H×W×C, and its `extra` columns (those present) as text. A
    pixel column missing, or a cell that is not a whole number from 0 to 255, is a DataError naming it."""
    import pandas as pd

    _require(path, what)
    if path.stat().st_size > MAX_PIXEL_CSV_BYTES:
        raise DataError(f"{path}: {path.stat().st_size:,} bytes of pixel text (limit {MAX_PIXEL_CSV_BYTES:,}); "
                        "is it the right file?")
    pixels = _pixel_columns(spec)
    try:
        header = pd.read_csv(path, nrows=0, encoding="utf-8").columns.tolist()
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{path}: not a readable CSV ({str(exc).strip().splitlines()[0][:200] if str(exc).strip() else exc})") from None
    missing = [c for c in pixels if c not in header]
    if missing:
        found = sum(c.startswith(spec.layout.pixel_prefix) for c in header)
        raise DataError(f"{path}: no column '{missing[0]}': {spec.image.height}x{spec.image.width}x{spec.image.channels} "
                        f"images need {len(pixels)} pixel columns, the file has {found}; fix `image:` or "
                        f"`layout.pixel_prefix` in competition/{spec.name}.yaml")
    wanted = [c for c in extra if c in header]
    try:
        table = pd.read_csv(path, usecols=pixels + wanted, dtype={**{c: "float32" for c in pixels}, **{c: str for c in wanted}},
                            keep_default_na=False, encoding="utf-8")
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: a pixel cell is not a number ({str(exc).strip().splitlines()[0][:160]}); "
                        "pixels must be whole numbers from 0 to 255") from None
    if table.empty:
        raise DataError(f"{path}: a header but no rows ({what})")
    values = table[pixels].to_numpy()
    bad = ~((values >= 0) & (values <= 255) & (values == np.round(values)))
    if bad.any():
        row, column = np.argwhere(bad)[0]
        raise DataError(f"{path} row {row + 2}: column '{pixels[column]}' holds {values[row, column]:g}; pixels must "
                        "be whole numbers from 0 to 255")
    images = values.astype(np.uint8).reshape(len(table), spec.image.height, spec.image.width, spec.image.channels)
    return images, table[wanted]


def read_pixel_csv(spec: CompetitionSpec, raw: Path, allocate: Allocate = empty_images) -> CanonicalData:
    layout = spec.layout
    train_path = raw / layout.train_csv
    train_images, columns = read_pixel_rows(train_path, spec, "training pixels and labels",
                                            [spec.label_column, spec.id_column])
    if spec.label_column not in columns:
        raise DataError(f"{train_path}: missing column '{spec.label_column}' (`label_column` in competition/{spec.name}.yaml)")
    labels = columns[spec.label_column].str.strip()
    empty = labels.index[labels == ""]
    if len(empty):
        raise DataError(f"{train_path} row {empty[0] + 2}: empty '{spec.label_column}'")
    if spec.id_column in columns:
        ids = columns[spec.id_column].str.strip()
        check_unique_ids(ids, train_path)
        train_ids = ids.tolist()
    else:  # digit-recognizer's train.csv has no ids: its rows are numbered
        train_ids = [f"train-{row}" for row in range(len(train_images))]
    classes = class_list(spec, labels, train_path)
    test_ids = read_test_ids(raw / layout.sample_submission, spec)
    test_labels = None
    if spec.source == "dataset":  # Kaggle's Fashion-MNIST dataset: a labelled test CSV, no sample submission
        if not (raw / layout.test_csv).is_file():
            return CanonicalData(train_images, label_indices(labels, classes, spec, train_path), train_ids,
                                 np.empty((0, *train_images.shape[1:]), dtype=np.uint8), [], classes)
        test_images, test_columns = read_pixel_rows(raw / layout.test_csv, spec, "test pixels", [spec.label_column])
        test_ids = [f"test-{row}" for row in range(len(test_images))]
        if spec.label_column in test_columns:
            test_labels = label_indices(test_columns[spec.label_column].str.strip(), classes, spec, raw / layout.test_csv)
    else:
        test_images, _ = read_pixel_rows(raw / layout.test_csv, spec, "test pixels", [])
    if len(test_images) != len(test_ids):
        raise DataError(f"{raw / layout.test_csv}: {len(test_images)} rows but {layout.sample_submission} lists "
                        f"{len(test_ids)} test ids; its rows must line up with the sample submission's")
    return CanonicalData(train_images, label_indices(labels, classes, spec, train_path), train_ids, test_images, test_ids,
                         classes, test_labels)


READERS: dict[str, Callable[..., CanonicalData]] = {  # (spec, raw folder, allocate) -> the data
    "npy": read_npy,
    "csv_images": read_csv_images,
    "class_folders": read_class_folders,
    "pixel_csv": read_pixel_csv,
    "file_labels": read_file_labels,
}


def held_out(spec: CompetitionSpec, data: CanonicalData, allocate: Allocate = empty_images) -> CanonicalData:
    """`source: dataset`: the labelled test split it ships, else a seeded stratified `holdout.fraction` of the
    training rows moved to the test side (they never train); the unlabelled test images a dataset may hold
    are dropped, having nothing to be scored against."""
    if data.test_labels is not None:
        print(f"prepare: {spec.name}: {len(data.test_ids):,} rows of the dataset's labelled test split are scored locally")
        return data
    from sklearn.model_selection import train_test_split

    rows = np.arange(len(data.train_labels))
    try:
        train_rows, test_rows = train_test_split(rows, test_size=spec.holdout.fraction, random_state=spec.holdout.seed,
                                                 stratify=data.train_labels)
    except ValueError as exc:  # a class with a single image cannot be split by class
        raise DataError(f"holdout: {exc}; lower holdout.fraction or check the dataset's labels") from None
    train_rows, test_rows = np.sort(train_rows), np.sort(test_rows)
    print(f"prepare: {spec.name}: {len(test_rows):,} of {len(rows):,} labelled rows held out ({spec.holdout.fraction:g}, "
          f"seed {spec.holdout.seed}) and scored locally; they never train")
    def rows_of(rows: np.ndarray) -> np.ndarray:
        out = allocate((len(rows), *data.train_images.shape[1:]))
        for start in range(0, len(rows), COPY_CHUNK):
            out[start:start + COPY_CHUNK] = data.train_images[rows[start:start + COPY_CHUNK]]
        return out

    return CanonicalData(rows_of(train_rows), data.train_labels[train_rows], [data.train_ids[i] for i in train_rows],
                         rows_of(test_rows), [data.train_ids[i] for i in test_rows], data.classes,
                         data.train_labels[test_rows])


def read_competition(spec: CompetitionSpec, raw: Path, allocate: Allocate = empty_images) -> CanonicalData:
    """The competition's data, its images in arrays from `allocate` (memory, unless prepare says disk)."""
    data = READERS[spec.layout.kind](spec, raw, allocate)
    if spec.source == "dataset":
        data = held_out(spec, data, allocate)
    overlap = set(data.train_ids) & set(data.test_ids)
    if overlap:
        raise DataError(f"{raw}: id '{sorted(overlap)[0]}' is both a training and a test id; ids must be unique across both")
    return data
