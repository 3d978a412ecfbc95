"""export: `make export` — a logged run packaged for a Kaggle code competition.

Writes .data/<comp>/export/<config hash>/ (rewritten whole, or not at all):
    dataset/    what `kaggle datasets create -p dataset` publishes (top-level files only, as the client uploads):
        ensemble.json             the lineage the script replays: members, views, weights, temperatures,
                                  class weights, class order, image shape, the competition's layout
        <member>-fold<k>.safetensors   each fold model's state dict (fp32, no pickled objects)
        kpipe_models.zip          the model code (models/) and the image fitting, imported from the zip
        inference.py              the script (pipelines/recipe/kernel_inference.py), also runnable by hand
        requirements.txt          the packages the script imports
        dataset-metadata.json     id <owner>/<slug>, title, licence
    kernel/     what `kaggle kernels push -p kernel` sends:
        inference.py, kernel-metadata.json (a script kernel, internet off, the dataset and the competition
        attached)
    manifest.json   the stage's manifest: the run, the lineage, versions, commit

The script reads the competition's test data from Kaggle's input layout (/kaggle/input/<slug>/) and
writes submission.csv; `make predict` and the pipeline's own submission compute the same numbers.
"""
from __future__ import annotations

import io
import shutil
import zipfile
from pathlib import Path

import torch

from competition import atomic, locks
from competition.errors import UserError
from competition.kaggle_adapter import kaggle_username
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


def package_slug(spec: CompetitionSpec, config_hash: str) -> str:
    """The dataset's and kernel's slug: 6-50 characters of letters, digits and hyphens."""
    return f"kpipe-{spec.name[:30].rstrip('-')}-{config_hash}"


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
    if spec.source == "dataset" and competition is None:
        raise UserError(f"{spec.name} is a Kaggle dataset: there is no competition to enter; name one with TARGET=<slug>")
    logged = find_run(spec, run)
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
    _print_next_steps(spec, logged, target, owner, final)
    return final


def _write_export(spec: CompetitionSpec, logged: LoggedRun, target: str, owner: str, final: Path) -> None:
    lineage, slug = logged.lineage, package_slug(spec, logged.config_hash)
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
        atomic.write_json(dataset / "ensemble.json", script)
        (dataset / "kpipe_models.zip").write_bytes(models_zip())
        shutil.copyfile(SCRIPT, dataset / "inference.py")
        shutil.copyfile(SCRIPT, kernel / "inference.py")
        (dataset / "requirements.txt").write_text("".join(f"{r}\n" for r in requirements(lineage)))
        title = f"kpipe {spec.name[:24]} {logged.config_hash}"
        atomic.write_json(dataset / "dataset-metadata.json", {
            "title": title, "id": f"{owner}/{slug}", "licenses": [{"name": "CC0-1.0"}],
            "description": f"Weights and code of kpipe run {logged.config_hash} on {spec.name} "
                           f"({len(script['members'])} model(s)); inference.py writes submission.csv."})
        atomic.write_json(kernel / "kernel-metadata.json", {
            "id": f"{owner}/{slug}", "title": slug, "code_file": "inference.py", "language": "python",
            "kernel_type": "script", "is_private": True, "enable_gpu": False, "enable_tpu": False,
            "enable_internet": False, "dataset_sources": [f"{owner}/{slug}"], "competition_sources": [target],
            "kernel_sources": [], "model_sources": []})


def _print_next_steps(spec: CompetitionSpec, logged: LoggedRun, target: str, owner: str, final: Path) -> None:
    slug = package_slug(spec, logged.config_hash)
    size = sum(p.stat().st_size for p in (final / "dataset").iterdir())
    folds = sum(len(m["folds"]) for m in logged.lineage["members"])
    print(f"export: run {logged.config_hash} ({len(logged.lineage['members'])} model(s), {folds} fold models, "
          f"{size / 1e6:.1f} MB) -> {final}")
    setup = ""
    if spec.host == "local":
        setup = (f"  export KAGGLE_API_ENVIRONMENT=LOCALHOST KAGGLE_CONFIG_DIR={host_root() / 'client'}"
                 "   # the local host's account\n")
    print("publish it and enter the code competition with the kaggle CLI:\n" + setup +
          f"  kaggle datasets create -p {final / 'dataset'}\n"
          f"  kaggle kernels push -p {final / 'kernel'}\n"
          f"  kaggle kernels status {owner}/{slug}          # until COMPLETE\n"
          f"  kaggle competitions submit {target} -k {owner}/{slug} -v <version push printed> -f submission.csv "
          f"-m 'kpipe {logged.config_hash}'")
    print(f"try the script here first: python {final / 'dataset' / 'inference.py'} --data <folder with the test data>")
