"""The RPCs of a Kaggle code competition, as the unmodified `kaggle` client (2.2.x) calls them:

    blobs.BlobApiService         StartBlobUpload                     a dataset file's upload slot
    datasets.DatasetApiService   CreateDataset, CreateDatasetVersion, GetDatasetStatus, GetDataset,
                                 ListDatasets, GetDatasetMetadata, DownloadDataset
    kernels.KernelsApiService    SaveKernel (`kernels push`), GetKernelSessionStatus, ListKernelSessionOutput
    competitions.CompetitionApiService  CreateCodeSubmission (`competitions submit -k owner/slug -v N`)

Each is `fn(handler, request, user)` in RPCS, keyed by (service, method); server.py dispatches to them
and turns the store's exceptions into Kaggle-style error replies. Where the client reads an `error`
field instead of an HTTP error (dataset create, kernel push), a refusal goes there.
"""
from __future__ import annotations

from typing import Callable
from urllib.parse import quote

from competition.host.code_store import check_file_name
from competition.host.paging import page_of
from competition.host.scoring import SubmissionRejected
from competition.host.store import InvalidName, NotFound

BLOBS = "blobs.BlobApiService"
DATASETS = "datasets.DatasetApiService"
KERNELS = "kernels.KernelsApiService"
COMPETITIONS = "competitions.CompetitionApiService"

RPCS: dict[tuple[str, str], Callable] = {}


def rpc(service: str):
    def register(fn: Callable) -> Callable:
        RPCS[(service, fn.__name__)] = fn
        return fn
    return register


def _text(request: dict, key: str, default: str | None = None) -> str:
    value = request.get(key, default)
    if not isinstance(value, str) or (default is None and not value):
        raise ValueError(f"field '{key}' must be a non-empty string")
    return value


def _version(value) -> int | None:
    """A kernel or dataset version: 3, "3" or "v3"; None when absent."""
    if value in (None, "", 0):
        return None
    text = str(value).removeprefix("v")
    if not text.isdigit():
        raise ValueError(f"'{str(value)[:20]}' is not a version number")
    return int(text)


def _own(user: str, owner: str, what: str) -> None:
    if owner != user:
        raise SubmissionRejected(f"You can only {what} under your own account ('{user}'), not '{owner[:80]}'")


# --- files of a dataset ------------------------------------------------------------------------------


@rpc(BLOBS)
def StartBlobUpload(handler, request: dict, user: str) -> None:
    name = check_file_name(_text(request, "name"))
    token = handler.store.start_blob_upload(name, int(request.get("contentLength") or 0))
    handler._send_json({"token": token, "createUrl": f"{handler._base_url()}/upload/{token}"})


# --- datasets ---------------------------------------------------------------------------------------


def _dataset_reply(handler, owner: str, slug: str, make: Callable[[], int]) -> None:
    """The reply `datasets create` and `datasets version` read: status ok and a url, or the error."""
    try:
        make()
    except (SubmissionRejected, InvalidName, NotFound) as exc:
        return handler._send_json({"status": "error", "error": str(exc), "url": "", "invalidTags": []})
    handler._send_json({"status": "ok", "error": "", "invalidTags": [],
                        "url": f"{handler._base_url()}/datasets/{owner}/{slug}"})


@rpc(DATASETS)
def CreateDataset(handler, request: dict, user: str) -> None:
    owner, slug = _text(request, "ownerSlug"), _text(request, "slug")
    _own(user, owner, "create datasets")
    _dataset_reply(handler, owner, slug, lambda: handler.code.create_dataset(
        owner, slug, _text(request, "title", ""), _text(request, "licenseName", "CC0-1.0"), request.get("files")))


@rpc(DATASETS)
def CreateDatasetVersion(handler, request: dict, user: str) -> None:
    owner, slug = _text(request, "ownerSlug"), _text(request, "datasetSlug")
    _own(user, owner, "version datasets")
    body = request.get("body") if isinstance(request.get("body"), dict) else {}
    _dataset_reply(handler, owner, slug, lambda: handler.code.create_dataset(
        owner, slug, "", "", body.get("files"), notes=str(body.get("versionNotes") or ""), new=False))


@rpc(DATASETS)
def GetDatasetStatus(handler, request: dict, user: str) -> None:
    handler.code.dataset(_text(request, "ownerSlug"), _text(request, "datasetSlug"))  # NotFound: 404, "slug free"
    handler._send_json({"status": "READY"})


def _dataset_row(handler, d: dict) -> dict:
    return {"ref": f"{d['owner']}/{d['slug']}", "title": d["title"], "totalBytes": d["total_bytes"],
            "lastUpdated": d["created"], "downloadCount": 0, "voteCount": 0, "usabilityRating": 0.0,
            "currentVersionNumber": d["version"], "ownerName": d["owner"], "ownerRef": d["owner"],
            "licenseName": d["license"], "isPrivate": True, "url": f"{handler._base_url()}/datasets/{d['owner']}/{d['slug']}"}


@rpc(DATASETS)
def GetDataset(handler, request: dict, user: str) -> None:
    handler._send_json(_dataset_row(handler, handler.code.dataset(_text(request, "ownerSlug"), _text(request, "datasetSlug"))))


@rpc(DATASETS)
def ListDatasets(handler, request: dict, user: str) -> None:
    mine = str(request.get("group") or "").endswith("_MY")
    owner = user if mine else (str(request.get("user") or "") or None)
    found = handler.code.datasets(owner, str(request.get("search") or ""))
    rows = [_dataset_row(handler, d) for d in found]
    page, next_token = page_of(rows, request)
    handler._send_json({"datasets": page, "nextPageToken": next_token})


@rpc(DATASETS)
def GetDatasetMetadata(handler, request: dict, user: str) -> None:
    dataset = handler.code.dataset(_text(request, "ownerSlug"), _text(request, "datasetSlug"))
    handler._send_json({"info": {"ownerUser": dataset["owner"], "datasetSlug": dataset["slug"], "title": dataset["title"],
                                 "licenses": [{"name": dataset["license"]}]}, "errorMessage": ""})


@rpc(DATASETS)
def DownloadDataset(handler, request: dict, user: str) -> None:
    owner, slug = _text(request, "ownerSlug"), _text(request, "datasetSlug")
    dataset = handler.code.dataset(owner, slug, _version(request.get("datasetVersionNumber")))
    name = request.get("fileName")
    base = f"/files/datasets/{quote(owner)}/{quote(slug)}/{dataset['version']}"
    if name:
        if not (dataset["folder"] / check_file_name(name)).is_file():
            raise NotFound(f"Dataset {owner}/{slug} has no file '{name[:120]}'")
        return handler._redirect(f"{base}/{quote(name)}")
    handler._redirect(f"{base}/{quote(slug)}.zip")


# --- kernels ----------------------------------------------------------------------------------------


@rpc(KERNELS)
def SaveKernel(handler, request: dict, user: str) -> None:
    owner, _, slug = _text(request, "slug").partition("/")
    reply = {"url": "", "versionNumber": 0, "error": "", "invalidTags": [], "invalidDatasetSources": [],
             "invalidCompetitionSources": [], "invalidKernelSources": []}
    try:
        _own(user, owner, "push kernels")
        if str(request.get("language") or "python") != "python" or str(request.get("kernelType") or "script") != "script":
            raise SubmissionRejected("The local host runs Python script kernels only (language python, kernel_type script)")
        if request.get("kernelDataSources") or request.get("modelDataSources"):
            raise SubmissionRejected("kernel_sources and model_sources are not implemented by the local host")
        datasets = [str(d) for d in request.get("datasetDataSources") or []]
        competitions = [str(c) for c in request.get("competitionDataSources") or []]
        internet = str(request.get("enableInternet", True)).lower() == "true"
        timeout = request.get("sessionTimeoutSeconds")
        version = handler.code.save_kernel(owner, slug, str(request.get("newTitle") or slug), _text(request, "text"),
                                           datasets, competitions, internet,
                                           run=request.get("kernelExecutionType") != "QUICK_SAVE",
                                           timeout_s=float(timeout) if timeout else None,
                                           accelerator=_accelerator(request))
    except (SubmissionRejected, InvalidName, NotFound) as exc:
        return handler._send_json({**reply, "error": str(exc)})
    handler._send_json({**reply, "versionNumber": version, "url": f"{handler._base_url()}/code/{owner}/{slug}"})


def _accelerator(request: dict) -> str:
    """What the kernel asked to run on: `machine_shape` (`kernels push --accelerator`) over the metadata's
    enable_gpu / enable_tpu; '' for none."""
    shape = str(request.get("machineShape") or "")[:60]
    if shape:
        return shape
    if str(request.get("enableGpu", False)).lower() == "true":
        return "gpu"
    return "tpu" if str(request.get("enableTpu", False)).lower() == "true" else ""


def _kernel_ref(request: dict) -> tuple[str, str, int | None]:
    return _text(request, "userName"), _text(request, "kernelSlug"), _version(request.get("versionLabel"))


@rpc(KERNELS)
def GetKernelSessionStatus(handler, request: dict, user: str) -> None:
    kernel = handler.code.kernel(*_kernel_ref(request))
    handler._send_json({"status": kernel["status"], "failureMessage": kernel["failure"]})


@rpc(KERNELS)
def ListKernelSessionOutput(handler, request: dict, user: str) -> None:
    kernel, files, log = handler.code.outputs(*_kernel_ref(request))
    base = f"{handler._base_url()}/outputs/{kernel['output_token']}"
    handler._send_json({"files": [{"fileName": name, "url": f"{base}/{quote(name)}"} for name in files],
                        "log": log, "nextPageToken": ""})


# --- code competition submissions -------------------------------------------------------------------


@rpc(COMPETITIONS)
def CreateCodeSubmission(handler, request: dict, user: str) -> None:
    competition = _text(request, "competitionName")
    ref = handler.code.submit_output(competition, handler.store.team_of(user), _text(request, "kernelOwner"),
                                     _text(request, "kernelSlug"), _version(request.get("kernelVersion")),
                                     _text(request, "fileName"),
                                     str(request.get("submissionDescription") or "")[:1000])
    title = handler.store.meta(competition)["title"]
    handler._send_json({"message": f"Successfully submitted to {title}", "ref": ref})

