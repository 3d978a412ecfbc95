"""`make init COMP=<slug>` — draft competition/<slug>.yaml from what the Kaggle API says about a
competition (its title, its evaluation metric, its files) and what its download holds (layout_guess.py).

The same calls go to kaggle.com (HOST=kaggle) and to the local host (HOST=local; the default when the
local host knows the slug). The draft is written only when it loads as a spec; what could not be
told is one line each naming the YAML key to fill and the choices. An existing spec is never
overwritten without FORCE=1.
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import yaml

from competition import atomic, disk, metrics
from competition.cli import OneLineParser
from competition.errors import SpecError, UserError
from competition.kaggle_adapter import Endpoint, call, host_description, kaggle_api
from competition.paths import host_root
from competition.redaction import redact
from competition.spec import SPEC_DIR, load_spec
from pipelines.__main__ import disk_full_message
from pipelines.stages.download import download
from pipelines.tools.layout_guess import Draft, Question, guess

# The shipped specs whose pool (candidates, TTA, ensemble) and budget a draft starts from, by the side of
# the images each was designed for: the nearest one to the draft's working size is copied.
POOL_SOURCES = {8: "digits", 28: "fashion-mnist", 64: "tiny-image-challenge"}
SLUG = re.compile(r"^[a-z0-9][a-z0-9-]*$")


def default_host(slug: str) -> str:
    """`local` when the local host ships or holds the competition, else `kaggle`."""
    from competition.host.builders import BUILTIN_META

    return "local" if slug in BUILTIN_META or (host_root() / "competitions" / slug).is_dir() else "kaggle"


def competition_metadata(endpoint: Endpoint, api) -> dict:
    """Title and evaluation metric from the competitions listing (the API has no call for one competition)."""
    listing = call(endpoint, f"looking up '{endpoint.kaggle_slug}'",
                   lambda: api.competitions_list(search=endpoint.kaggle_slug, page_size=200))
    for competition in getattr(listing, "competitions", None) or []:
        if str(competition.ref).rstrip("/").rsplit("/", 1)[-1] == endpoint.kaggle_slug:
            return {"title": competition.title, "metric": competition.evaluation_metric or "",
                    "kernels_only": bool(competition.is_kernels_submissions_only)}
    raise UserError(f"'{endpoint.kaggle_slug}': no such competition on {host_description(endpoint)}; check the slug "
                    "(the last part of the competition's URL)")


def metric_entry(kaggle_name: str, draft: Draft) -> str | dict | None:
    """Ours for kaggle.com's name, checked against the sample submission's columns; None asks."""
    mapped = metrics.from_kaggle_name(kaggle_name) if kaggle_name else None
    choices = ", ".join(metrics.KINDS)
    if mapped is None:
        draft.questions.append(Question("metric", f"the competition's metric '{kaggle_name or '(none given)'}' is none "
                                        f"kpipe scores; choose the nearest of: {choices}"))
        return None
    name, number = mapped
    if draft.task == "multi_label":
        return multi_label_metric(kaggle_name, name, number, draft)
    k = number
    if "k" in metrics.KINDS[name].arguments and k is None:
        draft.questions.append(Question("metric", f"'{kaggle_name}' takes k (how many labels a row lists): write "
                                        f"{{name: {name}, k: 5}} with the k of the competition's rules"))
        return None
    if metrics.KINDS[name].task == "multi_label":
        draft.questions.append(Question("metric", f"'{kaggle_name}' scores label sets, but the training labels hold one "
                                        "class per image; choose a single-label metric, or check label_column"))
        return None
    draft.found.append(f"metric: {name if k is None else f'{name} (k={k})'} (the competition's '{kaggle_name}')")
    columns, classes = len(draft.prediction_columns), len(draft.classes)
    allowed = {classes, 1} if classes == 2 else {classes}  # two classes: one column, P(the second), may do
    if metrics.KINDS[name].submission == "probabilities" and classes and columns not in allowed:
        draft.questions.append(Question("metric", f"{name} is scored on one probability column per class, but the sample "
                                        f"submission has {columns} columns for {classes} classes"))
    return name if k is None else {"name": name, "k": k}


# Single-label names kaggle.com gives metrics that, on label sets, mean these multi-label ones (beta 1).
AS_MULTI_LABEL = {"f1_micro": ("f_beta_micro", 1.0), "f1_macro": ("f_beta_macro", 1.0), "roc_auc": ("mean_column_auc", None),
                  "log_loss": ("multilabel_log_loss", None)}


def multi_label_metric(kaggle_name: str, name: str, beta: float | None, draft: Draft) -> str | dict | None:
    """Ours for a multi-label competition's metric, checked against the sample submission."""
    name, beta = AS_MULTI_LABEL.get(name, (name, beta))
    if metrics.KINDS[name].task != "multi_label":
        draft.questions.append(Question("metric", f"'{kaggle_name}' scores one class per image, but the training labels "
                                        "hold a set per image; choose one of: " + ", ".join(
                                            n for n, kind in metrics.KINDS.items() if kind.task == "multi_label")))
        return None
    if "beta" in metrics.KINDS[name].arguments and beta is None:
        draft.questions.append(Question("metric", f"'{kaggle_name}' takes beta: write {{name: {name}, beta: 2}} with "
                                        "the beta of the competition's rules"))
        return None
    columns = draft.prediction_columns
    if metrics.KINDS[name].submission == "probabilities" and columns != draft.classes:
        draft.questions.append(Question("metric", f"{name} is scored on one probability column per label, but the "
                                        f"sample submission's columns ({', '.join(columns[:6])}) are not the labels "
                                        f"({', '.join(draft.classes[:6])})"))
    entry = {"name": name, "beta": int(beta) if float(beta).is_integer() else beta} if beta is not None else name
    draft.found.append(f"metric: {_flow(entry)} (the competition's '{kaggle_name}', on label sets)")
    return entry


def pool_source(draft: Draft) -> str:
    side = max(draft.image.get("height", 28), draft.image.get("width", 28))
    return POOL_SOURCES[min(POOL_SOURCES, key=lambda s: abs(s - side))]


def folds_entry(draft: Draft, n_splits: int = 5) -> dict:
    rare = [label for label, n in zip(draft.classes, draft.class_counts) if n < n_splits]
    if rare:
        draft.found.append(f"folds: {len(rare)} classes have fewer than {n_splits} images ({', '.join(rare[:5])}"
                           f"{', ...' if len(rare) > 5 else ''}): their rows always train and are never held out")
    return {"n_splits": n_splits, "seed": 42}


def _flow(value) -> str:
    """One YAML value on one line (a scalar without the document-end marker PyYAML adds)."""
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=1000).strip()
    return text.removesuffix("...").strip()


def render(slug: str, host: str, metadata: dict, draft: Draft, metric) -> str:
    """The spec's text: what was found, in the keys of competition/*.yaml, with why in comments."""
    source = load_spec(pool_source(draft))
    lines = [f"# Drafted by `make init COMP={slug}` on {time.strftime('%Y-%m-%d')} from what "
             f"{'the local host' if host == 'local' else 'kaggle.com'} says about the competition and what its download "
             "holds.", "# Check it, then `make submit COMP=" + slug + "`.",
             f"name: {slug}", f"title: {_flow(metadata['title'] or slug)}", f"kaggle_slug: {slug}", f"host: {host}"]
    if metadata.get("kernels_only"):
        lines.append("kernels_only: true                   # a code competition: make submit enters it through a kernel")
    lines.append("layout:")
    layout = {"kind": draft.layout.get("kind"), **draft.layout}
    lines += [f"  {key}: {_flow(value)}" for key, value in layout.items()]
    lines.append(f"id_column: {_flow(draft.id_column)}")
    if draft.label_format != "columns":
        lines.append(f"label_column: {_flow(draft.label_column)}")
    if draft.task == "multi_label":
        lines.append("task: multi_label                    # each image holds a set of labels")
        lines.append(f"label_format: {draft.label_format}" + ("                  # the labels separated by spaces"
                                                              if draft.label_format == "tags" else
                                                              "               # one 0/1 column per label"))
    if draft.submission_id_column:
        lines.append(f"submission_id_column: {_flow(draft.submission_id_column)}   # the sample submission's name")
    if draft.submission_label_column:
        lines.append(f"submission_label_column: {_flow(draft.submission_label_column)}")
    shown = ", ".join(draft.classes[:10]) + (", ..." if len(draft.classes) > 10 else "")
    lines.append(f"classes: auto                        # read at prepare time: {len(draft.classes)} found ({shown})")
    lines.append(f"image: {_flow(draft.image)}")
    lines.append(f"metric: {_flow(metric)}" if metric is not None else "# metric: FILL IN (see the lines make init printed)")
    lines.append(f"folds: {_flow(folds_entry(draft))}")
    lines.append("flips: {hflip: true, vflip: false}   # set hflip: false where a mirror image changes the class "
                 "(digits, text)")
    lines.append(f"# Pool and budget from competition/{source.name}.yaml, whose images are the nearest in size.")
    budget = {device: f"{seconds / 60:g}m" for device, seconds in source.budget.model_dump(mode="json").items()}
    lines.append(f"budget: {_flow(budget)}")
    pool = source.pool.model_dump(mode="json", exclude_defaults=True)
    if draft.task == "multi_label":  # pseudo-labels take one class per image
        pool["candidates"] = [c for c in pool["candidates"] if not c.get("pseudo_labels")]
    pool = yaml.safe_dump({"pool": pool}, sort_keys=False, default_flow_style=None, width=110)
    return "\n".join(lines) + "\n" + pool


def init(slug: str, host: str | None, force: bool, spec_dir: Path = SPEC_DIR) -> int:
    """Draft `spec_dir`/<slug>.yaml; 0 when it was written and loads, 2 when keys are left to fill."""
    if not SLUG.match(slug):
        raise UserError(f"COMP={slug}: a Kaggle competition slug is lower-case letters, digits and dashes (the last "
                        "part of its URL), e.g. COMP=dogs-vs-cats-redux-kernels-edition")
    target = spec_dir / f"{slug}.yaml"
    if target.exists() and not force:
        raise UserError(f"{target}: exists; `make init COMP={slug} FORCE=1` drafts it again over the old one")
    endpoint = Endpoint(slug, slug, host or default_host(slug))
    api = kaggle_api(endpoint)
    metadata = competition_metadata(endpoint, api)
    # One page of the file list is enough to show what the download holds; the download itself is complete.
    files = call(endpoint, f"listing the files of '{slug}'", lambda: api.competition_list_files(slug, page_size=200))
    names = [f.name for f in getattr(files, "files", None) or []]
    more = "+" if getattr(files, "next_page_token", None) else ""
    print(f"init: {slug} on {host_description(endpoint)}: '{metadata['title']}', metric '{metadata['metric']}', "
          f"{len(names)}{more} file(s): {', '.join(names[:6])}{', ...' if len(names) > 6 else ''}")
    draft = guess(download(endpoint))
    metric = metric_entry(metadata["metric"], draft)
    text = render(slug, endpoint.host, metadata, draft, metric)
    for line in draft.found:
        print(f"init: {line}")
    for question in draft.questions:
        print(f"init: fill `{question.key}`: {question.why}")
    if draft.questions:
        draft_path = target.with_suffix(".yaml.draft")
        atomic.write_text(draft_path, text)
        print(f"init: wrote {draft_path}; fill the keys above, then rename it to {target.name}")
        return 2
    atomic.write_text(target, text)
    try:
        load_spec(str(target))
    except SpecError as exc:  # a draft that does not load is not a spec: keep it aside, say why
        target.replace(target.with_suffix(".yaml.draft"))
        raise UserError(f"the draft does not load as a spec ({exc}); it is in {target.with_suffix('.yaml.draft')}") from None
    print(f"init: wrote {target}; next: make submit COMP={slug}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="make init", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slug", required=True)
    parser.add_argument("--host", choices=("kaggle", "local"), default=None)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    disk.keep_writes_failing_instead_of_dying()
    try:
        return init(args.slug, args.host, args.force)
    except UserError as exc:
        print(f"error: {redact(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing was written but the download, which the next run reuses", file=sys.stderr)
        return 130
    except Exception as exc:  # a disk that fills during the download: one line, as every command says it
        message = disk_full_message(exc, args.slug)
        if message is None:
            raise
        print(f"error: {redact(message)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
