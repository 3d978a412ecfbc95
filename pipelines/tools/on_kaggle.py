"""make submit COMP=x ON=kaggle: train on Kaggle's machine, then submit from here.

1. `make wheelhouse`'s house (kpipe from this checkout, and the wheels it needs besides torch) is
   published as <you>/kpipe-wheelhouse: a new version only when it changed;
2. a training kernel <you>/kpipe-train-<comp> is pushed with the competition and the house attached,
   internet off, a GPU asked for (GPU=0: none). Its script (TRAIN_SCRIPT) installs kpipe offline from the
   house, writes the spec, and runs `python -m pipelines submit --dry-run` there: the pipeline links the
   competition's files from /kaggle/input, plans for the machine it finds (its GPUs or CPUs) inside the
   budget (BUDGET=, else the kernel's time limit less a margin), trains, and writes its plan of record,
   checkpoints, predictions, report and submission file into the kernel's output;
3. here, the command waits for the kernel (a rerun follows the same kernel instead of pushing another:
   .data/<comp>/kernels/kpipe-train-<comp>/pushed.json), downloads its output once, and adds its folders
   to .data/<comp>/ (a folder that exists here is kept: folders are named by what made them);
4. then `make submit COMP=x PLAN=<the kernel's plan of record>` runs here: every fold, TTA and ensemble is
   found done, so it only submits (or, for a code competition, enters through an inference kernel), and
   `make report`, `make predict`, `make export` and fold reruns work on the outputs as on a local run.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

import yaml

from competition import atomic, disk, locks
from competition.cli import OneLineParser
from competition.errors import KaggleError, SpecError, UserError
from competition.kaggle_adapter import kaggle_api, kaggle_username
from competition.kaggle_kernels import fetch_output, kernel_status, log_tail, push_kernel, wait_for_kernel
from competition.paths import competition_root
from competition.spec import CompetitionSpec, load_spec, read_spec_keys, spec_path
from pipelines.__main__ import main as pipelines_main
from pipelines.tools import wheelhouse

KAGGLE_TIME_LIMIT_S = 12 * 3600  # a Kaggle notebook session's limit (CPU and GPU)
LOCAL_TIME_LIMIT_S = 3600  # the local host's default (KPIPE_KERNEL_TIMEOUT_S there)
MARGIN_S = 600  # of the kernel's limit, left for installing kpipe and writing the output
SKIPPED = ("raw",)  # the competition's own files: the host has them, a local download fetches them

TRAIN_SCRIPT = '''"""kpipe's training kernel, written by `make submit ON=kaggle`: install kpipe offline, train, keep the outputs."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

SPEC = {spec!r}
NAME = {name!r}
RECIPE = {recipe!r}  # the budget to plan in; none for a spec without a pool (its fixed profile)
HOUSE = {house!r}

root = Path(os.environ.get("KAGGLE_INPUT_ROOT", "/kaggle/input"))
subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-compile", "--find-links",
                str(root / HOUSE), "kpipe"], check=True)
Path("kpipe-spec.yaml").write_text(SPEC)
done = subprocess.run([sys.executable, "-m", "pipelines", "submit", "--comp", "kpipe-spec.yaml", *RECIPE, "--dry-run"])
shutil.rmtree(Path("kpipe-data") / NAME / "raw", ignore_errors=True)  # links to /kaggle/input: not an output
sys.exit(done.returncode)
'''


def kernel_slug(spec: CompetitionSpec) -> str:
    return f"kpipe-train-{spec.name[:38].rstrip('-')}"


def default_budget(spec: CompetitionSpec) -> str:
    limit = LOCAL_TIME_LIMIT_S if spec.host == "local" else KAGGLE_TIME_LIMIT_S
    return f"{(limit - MARGIN_S) // 60}m"


def write_kernel(spec: CompetitionSpec, comp: str, owner: str, budget: str, gpu: bool, folder: Path) -> str:
    """The training kernel's folder for `kernels push`; returns the digest of what it runs."""
    keys = read_spec_keys(spec_path(comp))  # `extends:` resolved: the kernel has no spec folder beside it
    recipe = ["--budget", budget] if spec.pool is not None else []
    script = TRAIN_SCRIPT.format(spec=yaml.safe_dump(keys, sort_keys=False), name=spec.name, recipe=recipe,
                                 house=wheelhouse.SLUG)
    slug = kernel_slug(spec)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    (folder / "train.py").write_text(script, encoding="utf-8")
    atomic.write_json(folder / "kernel-metadata.json", {
        "id": f"{owner}/{slug}", "title": slug, "code_file": "train.py", "language": "python", "kernel_type": "script",
        "is_private": True, "enable_gpu": gpu, "enable_tpu": False, "enable_internet": False,
        "dataset_sources": [f"{owner}/{wheelhouse.SLUG}"], "competition_sources": [spec.kaggle_slug],
        "kernel_sources": [], "model_sources": []})
    return hashlib.sha256((folder / "train.py").read_bytes() + (folder / "kernel-metadata.json").read_bytes()).hexdigest()[:16]


def merge_outputs(pulled: Path, spec: CompetitionSpec) -> list[str]:
    """The kernel's kpipe-data/<comp>/ folders added to .data/<comp>/; the names of those added."""
    source, target = pulled / "kpipe-data" / spec.name, competition_root(spec.name)
    if not source.is_dir():
        raise UserError(f"{pulled}: the kernel wrote no kpipe-data/{spec.name}/; its log says why")
    added = []
    for stage in sorted(p for p in source.iterdir() if p.name not in SKIPPED):
        if stage.name == "plans":  # records, not outputs named by their inputs: the kernel's run is the latest
            for plan in stage.glob("*.json"):
                atomic.write_bytes(target / "plans" / plan.name, plan.read_bytes())
        elif stage.is_file():
            _place(stage, target / stage.name)
        else:
            added += [f"{stage.name}/{item.name}" for item in sorted(stage.iterdir())
                      if _place(item, target / stage.name / item.name)]
    return added


def _place(item: Path, final: Path) -> bool:
    """`item` copied to `final` unless something is there already; staged and renamed, so that a command
    running beside this one never meets a half-copied folder (it would train that unit again)."""
    if final.exists():
        return False
    if item.is_file():
        atomic.write_bytes(final, item.read_bytes())
        return True
    with atomic.staged_folder(final) as staging:
        shutil.copytree(item, staging, dirs_exist_ok=True)
        return atomic.publish_folder(staging, final)


def plan_of_record(pulled: Path, spec: CompetitionSpec) -> Path | None:
    """The plan the kernel ran (in its pulled output); None when it ran a fixed recipe (no `pool:`)."""
    plans = sorted((pulled / "kpipe-data" / spec.name / "plans").glob("*.json"), key=lambda p: p.stat().st_mtime)
    return plans[-1] if plans else None


def train_on_kaggle(comp: str, budget: str | None, gpu: bool) -> Path | None:
    """Push (or follow) the training kernel, wait, pull its outputs; the plan of record to replay here."""
    spec = load_spec(comp)
    api = kaggle_api(spec)
    owner = kaggle_username(spec)
    house = wheelhouse.build(owner)
    published = wheelhouse.publish(spec, api, house)
    print(f"on kaggle: dataset {published.ref} version {published.version}: "
          + ("uploaded" if published.uploaded else "holds this kpipe already, nothing uploaded"))
    kernels = competition_root(spec.name) / "kernels" / kernel_slug(spec)
    ref = f"{owner}/{kernel_slug(spec)}"
    with locks.hold(kernels, f"the training kernel of {spec.name}"):
        digest = write_kernel(spec, comp, owner, budget or default_budget(spec), gpu, kernels / "push")
        digest = hashlib.sha256(f"{digest}{published.version}".encode()).hexdigest()[:16]
        try:
            earlier = json.loads((kernels / "pushed.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            earlier = {}
        version = earlier.get("kernel_version") if earlier.get("digest") == digest else None
        if version is not None and kernel_status(spec, api, ref, version)[0] in ("ERROR", "CANCEL_ACKNOWLEDGED"):
            version = None
        if version is None:
            version = push_kernel(spec, api, kernels / "push")
            atomic.write_json(kernels / "pushed.json", {"digest": digest, "kernel_version": version})
            recipe = f"budget {budget or default_budget(spec)}" if spec.pool is not None else "its fixed profile"
            print(f"on kaggle: pushed training kernel {ref} version {version} ({recipe}, "
                  f"{'GPU asked for' if gpu else 'no GPU'})")
        else:
            print(f"on kaggle: following training kernel {ref} version {version}, pushed for this run before")
        pulled = kernels / f"v{version}"
        if not (pulled / ".complete").is_file():
            status, failure = wait_for_kernel(spec, api, ref, version, KAGGLE_TIME_LIMIT_S + 3600)
            if status != "COMPLETE":
                fetch_output(spec, api, ref, version, pulled)
                raise KaggleError(f"training kernel {ref} version {version} {'failed' if status == 'ERROR' else status.lower()}"
                                  f": {failure or 'no reason given'}; its log ends: "
                                  f"{log_tail(pulled / f'{kernel_slug(spec)}.log')}; the whole log: "
                                  f"{pulled / f'{kernel_slug(spec)}.log'}")
            shutil.rmtree(pulled, ignore_errors=True)
            files = fetch_output(spec, api, ref, version, pulled)
            (pulled / ".complete").touch()
            print(f"on kaggle: downloaded {len(files)} output files of {ref} version {version} into {pulled}")
        added = merge_outputs(pulled, spec)
        print(f"on kaggle: {len(added)} folders added to {competition_root(spec.name)}"
              + (f" ({', '.join(added[:4])}{', ...' if len(added) > 4 else ''})" if added else " (all there already)"))
        plan = plan_of_record(pulled, spec)
    # The log the kernel ran: what its plan chose, and its time.
    log = pulled / f"{kernel_slug(spec)}.log"
    if log.is_file():
        for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith(("run:", "total ")) or "planned vs actual" in line:
                print(f"  kernel: {line}")
    return plan


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="make submit ON=kaggle", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--comp", required=True)
    parser.add_argument("--budget", default=None)
    parser.add_argument("--no-gpu", action="store_true")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    disk.keep_writes_failing_instead_of_dying()
    try:
        plan = train_on_kaggle(args.comp, args.budget, not args.no_gpu)
    except (UserError, KaggleError, SpecError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    replay = ["--plan", str(plan)] if plan is not None else []
    return pipelines_main(["submit", "--comp", args.comp, *replay] + (["--dry-run"] if args.dry_run else []))


if __name__ == "__main__":
    sys.exit(main())
