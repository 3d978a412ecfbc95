"""export: `make export` — a logged run packaged for a Kaggle code competition.

Writes .data/<comp>/export/<config hash>/ (rewritten whole, or not at all):
    dataset/    what `kaggle datasets create|version -p dataset` publishes (top-level files only, as the
                client uploads):
        ensemble.json             the lineage the script replays: members, views, weights, temperatures,
                                  class weights, class order, image shape, the competition's layout
        <member>-fold<k>.safetensors   each fold model's state dict (fp32, no pickled objects); members the
                                  ensemble gave weight 0 are left out (they add nothing to the blend)
        kpipe_models.zip          the model code (models/) and the image fitting, imported from the zip
        inference.py              the script (pipelines/recipe/kernel_inference.py), also runnable by hand
        requirements.txt          the packages the script imports
        kpipe-package.json        each file's SHA-256 and the package's digest: whether the dataset on
                                  the host already holds this package (then nothing is uploaded)
        dataset-metadata.json     id <owner>/<slug>, title, licence
    kernel/     what `kaggle kernels push -p kernel` sends:
        inference.py (with the package's digest written in: the kernel refuses any other dataset
        version), kernel-metadata.json (a script kernel, internet off, the dataset and the competition
        attached)
    manifest.json   the stage's manifest: the run, the lineage, versions, commit

One dataset and one kernel per competition entered (`kpipe-<competition>`): each run is a new version
of both, so the account holds kpipe's entry to a competition and its history, not a dataset per run.

The script reads the competition's test data from Kaggle's input layout (/kaggle/input/<slug>/) and
writes submission.csv; `make predict` and the pipeline's own submission compute the same numbers.
"""
from __future__ import annotations

import io
import json
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from competition import atomic, locks
from competition.errors import UserError
from competition.kaggle_adapter import kaggle_username
from competition.kaggle_kernels import PACKAGE_FILE, file_digests
from competition.paths import REPO_ROOT, competition_root, host_root
from competition.spec import CompetitionSpec
from pipelines.recipe import image_fit, kernel_inference
from pipelines.stages.artifacts import atomic_output
from pipelines.stages.lineage import LoggedRun, checkpoint_path, find_run
from pipelines.stages.predict import load_checkpoint

SCRIPT = Path(kernel_inference.__file__)
BASE_REQUIREMENTS = ["numpy", "pandas", "pillow", "safetensors", "torch"]
LIBRARY_PREFIXES = {"timm:": "timm", "tv:": "torchvision"}
ZIP_TIME = (2020, 1, 1, 0, 0, 0)  # fixed, so the same code zips to the same bytes


EXPECTED_LINE = "EXPECTED_PACKAGE = None"  # in kernel_inference.py; the kernel's copy names its package


@dataclass(frozen=True)
class Package:
    """An exported run: what `make submit` publishes for a code competition."""

    folder: Path  # export/<config hash>/, holding dataset/ and kernel/
    owner: str
    slug: str  # the dataset's and the kernel's
    target: str  # the competition the kernel enters
    digest: str  # of the dataset's files (kpipe-package.json)
    members: list[str]  # the members shipped
    left_out: list[str]  # members at weight 0, not shipped

    @property
    def ref(self) -> str:
        return f"{self.owner}/{self.slug}"

    @property
    def dataset(self) -> Path:
        return self.folder / "dataset"

    @property
    def kernel(self) -> Path:
        return self.folder / "kernel"


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def package_slug(target: str) -> str:
    """The dataset's and kernel's slug for entries to `target`: 6-50 characters of letters, digits and hyphens."""
    return f"kpipe-{target.lower()[:44].rstrip('-')}"


def requirements(lineage: dict) -> list[str]:
    extra = {package for member in lineage["members"] for prefix, package in LIBRARY_PREFIXES.items()
             if member["run"]["model"].startswith(prefix)}
    return sorted(set(BASE_REQUIREMENTS) | extra)


def models_zip() -> bytes:
    """models/*.py (the registry and every family: the script needs the one its members use) and the
    image fitting the pipeline prepared with (as `kpipe_image_fit`), as a zip the script imports from."""
    sources = [(f"models/{path.name}", path) for path in sorted((REPO_ROOT / "models").glob("*.py"))
               if path.name != "__main__.py"]
    sources.append(("kpipe_image_fit.py", Path(image_fit.__file__)))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, path in sources:
            info = zipfile.ZipInfo(name, date_time=ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, path.read_bytes())
    return buffer.getvalue()


def write_weights(spec: CompetitionSpec, lineage: dict, dataset: Path) -> list[dict]:
    """One safetensors file a fold model; returns the members as the script reads them."""
    from safetensors.torch import save_file

    members = []
    for member in lineage["members"]:
        if member["weight"] == 0:  # adds exactly nothing to the blend: shipping it would only cost the kernel time
            continue
        folds = []
        for fold in member["folds"]:
            name = f"{member['name']}-fold{fold['fold']}.safetensors"
            state = load_checkpoint(checkpoint_path(spec, fold), torch.device("cpu"))["state_dict"]
            # Contiguous fp32 copies: channels_last and shared storage are not what safetensors holds.
            save_file({k: v.detach().float().contiguous().clone() if v.is_floating_point() else v.contiguous().clone()
                       for k, v in state.items()}, str(dataset / name), metadata={"format": "pt"})
            folds.append({"fold": fold["fold"], "weights": name, "digest": fold["digest"]})
        run = member["run"]
        members.append({"name": member["name"], "weight": member["weight"], "temperature": member["temperature"],
                        "views": member["views"], "folds": folds,
                        "run": {"model": run["model"], "model_args": run.get("model_args", {}),
                                "input_size": run.get("input_size")}})
    return members


def export(spec: CompetitionSpec, run: str | None = None, competition: str | None = None,
           owner: str | None = None) -> Path:
    """`make export`: package a logged run and print the CLI commands that enter the competition with it."""
    if spec.source == "dataset" and competition is None:
        raise UserError(f"{spec.name} is a Kaggle dataset: there is no competition to enter; name one with TARGET=<slug>")
    package = write_package(spec, find_run(spec, run), competition, owner)
    _print_next_steps(spec, package)
    return package.folder


def write_package(spec: CompetitionSpec, logged: LoggedRun, competition: str | None = None,
                  owner: str | None = None) -> Package:
    """The run's package under export/<config hash>/ (rewritten whole each time: the same run writes the
    same bytes, so its digest only moves when the weights or the code do)."""
    target = competition or spec.code_competition or spec.kaggle_slug
    owner = owner or kaggle_username(spec)
    if owner is None:
        raise UserError("no Kaggle username to publish under: set OWNER=<your Kaggle username> (or save the kaggle "
                        "client's credentials first; for the local host, `make serve` writes them)")
    unknown = sorted({v for m in logged.lineage["members"] for v in m["views"]} - set(kernel_inference.VIEWS))
    if unknown:
        raise UserError(f"run {logged.config_hash} predicted through view '{unknown[0]}', which the exported script "
                        f"does not have (it has {', '.join(kernel_inference.VIEWS)}); add it to "
                        "pipelines/recipe/kernel_inference.py's VIEWS")
    final = competition_root(spec.name) / "export" / logged.config_hash
    with locks.hold(final, f"the export of {logged.config_hash}"):
        _write_export(spec, logged, target, owner, final)
    shipped = [m["name"] for m in logged.lineage["members"] if m["weight"] != 0]
    left_out = [m["name"] for m in logged.lineage["members"] if m["weight"] == 0]
    digest = read_json(final / "dataset" / PACKAGE_FILE)["digest"]
    return Package(final, owner, package_slug(target), target, digest, shipped, left_out)


def _write_export(spec: CompetitionSpec, logged: LoggedRun, target: str, owner: str, final: Path) -> None:
    lineage, slug = logged.lineage, package_slug(target)
    config = {"run": logged.config_hash, "ensemble": logged.ensemble.name, "competition": target, "owner": owner}
    with atomic_output(final, "export", config, {"ensemble": logged.ensemble.name}, {"lineage": lineage},
                       replace=True) as staging:
        dataset, kernel = staging / "dataset", staging / "kernel"
        dataset.mkdir()
        kernel.mkdir()
        script = {
            "competition": target, "dataset_slug": slug, "config_hash": logged.config_hash,
            "source": {"competition": spec.name, "ensemble": logged.ensemble.name, "git_commit": logged.row["git_commit"]},
            "layout": spec.layout.model_dump(), "id_column": spec.submission_id, "label_column": spec.submission_label,
            "classes": lineage["classes"], "image": lineage["image"],
            "submission": {"kind": lineage["submission"], "k": spec.metric.bind().k},
            "members": write_weights(spec, lineage, dataset),
            "ensemble_temperature": lineage["ensemble_temperature"], "class_weights": lineage["class_weights"]}
        if lineage.get("multi_label"):  # a sigmoid per label, each label's threshold, empty label sets or not
            script.update(multi_label=True, thresholds=lineage.get("thresholds"))
            script["submission"]["allow_empty"] = spec.metric.bind().allow_empty
        atomic.write_json(dataset / "ensemble.json", script)
        (dataset / "kpipe_models.zip").write_bytes(models_zip())
        shutil.copyfile(SCRIPT, dataset / "inference.py")
        (dataset / "requirements.txt").write_text("".join(f"{r}\n" for r in requirements(lineage)))
        digests = file_digests(dataset)
        atomic.write_json(dataset / PACKAGE_FILE, {**digests, "run": logged.config_hash})
        code = SCRIPT.read_text(encoding="utf-8")
        if code.count(EXPECTED_LINE) != 1:
            raise AssertionError(f"{SCRIPT} must hold the line '{EXPECTED_LINE}' once")
        (kernel / "inference.py").write_text(code.replace(EXPECTED_LINE, f'EXPECTED_PACKAGE = "{digests["digest"]}"'),
                                             encoding="utf-8")
        atomic.write_json(dataset / "dataset-metadata.json", {
            "title": f"kpipe {target[:40]}", "id": f"{owner}/{slug}", "licenses": [{"name": "CC0-1.0"}],
            "description": f"kpipe's entry to {target}: weights and code of the run in ensemble.json "
                           "(a new version each run); inference.py writes submission.csv."})
        atomic.write_json(kernel / "kernel-metadata.json", {
            "id": f"{owner}/{slug}", "title": slug, "code_file": "inference.py", "language": "python",
            "kernel_type": "script", "is_private": True, "enable_gpu": False, "enable_tpu": False,
            "enable_internet": False, "dataset_sources": [f"{owner}/{slug}"], "competition_sources": [target],
            "kernel_sources": [], "model_sources": []})


def describe(package: Package) -> str:
    """One line: what the package holds."""
    size = sum(p.stat().st_size for p in package.dataset.iterdir())
    folds = len(list(package.dataset.glob("*.safetensors")))
    left = (f"; left out at ensemble weight 0: {', '.join(package.left_out)}" if package.left_out else "")
    return (f"{len(package.members)} model(s) ({', '.join(package.members)}), {folds} fold models, {size / 1e6:.1f} MB, "
            f"package {package.digest}{left}")


def _print_next_steps(spec: CompetitionSpec, package: Package) -> None:
    run = read_json(package.dataset / PACKAGE_FILE)["run"]
    print(f"export: run {run}: {describe(package)} -> {package.folder}")
    setup = ""
    if spec.host == "local":
        setup = (f"  export KAGGLE_API_ENVIRONMENT=LOCALHOST KAGGLE_CONFIG_DIR={host_root() / 'client'}"
                 "   # the local host's account\n")
    print("publish it and enter the code competition with the kaggle CLI (or let `make submit` do all of it on a "
          "spec with `kernels_only: true`):\n" + setup +
          f"  kaggle datasets create -p {package.dataset}      # the first time; then: kaggle datasets version -p "
          f"{package.dataset} -m 'run {run}'\n"
          f"  kaggle kernels push -p {package.kernel}\n"
          f"  kaggle kernels status {package.ref}          # until COMPLETE\n"
          f"  kaggle competitions submit {package.target} -k {package.ref} -v <version push printed> -f submission.csv "
          f"-m 'kpipe {run}'")
    print(f"try the script here first: python {package.dataset / 'inference.py'} --data <folder with the test data>")
