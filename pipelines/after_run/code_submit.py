"""code_submit: the submit stage of a code competition (`kernels_only: true`), entered through a kernel.

A code competition's download holds a few test rows; the whole test set exists only where the host runs
kernels. So `make submit`, after training as for any competition:
1. writes the visible rows' predictions and checks them against the sample submission (as for a CSV);
2. packages the run (after_run/export.py: members at weight 0 left out);
3. publishes the package as the dataset `kpipe-<competition>`: created the first time, a new version when
   the package changed, nothing when the host holds it already;
4. pushes the inference kernel (its script names the package, so it refuses any other dataset version),
   or follows the kernel pushed for this package before when an interrupted run left one running;
5. waits for it; a kernel that fails is one line with the tail of its log and where the rest is;
6. downloads its output into .data/<comp>/kernels/<kernel>/v<N>/ and checks submission.csv there;
7. submits that output (`competitions submit -k`) under the submissions log's rules: a PENDING row before,
   the daily limit, the score awaited, the kernel and dataset versions in the row's `kernel` column.
Nothing counts as submitted that was not: a failed kernel or a missing output is a FAILED row, never a
score.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from competition import atomic, locks
from competition.errors import KaggleError, UserError
from competition.kaggle_adapter import call, host_description, kaggle_api
from competition.kaggle_kernels import fetch_output, kernel_status, log_tail, publish_dataset, push_kernel, wait_for_kernel
from competition.paths import competition_root
from competition.spec import CompetitionSpec
from pipelines.after_run.export import Package, describe, write_package
from pipelines.stages.lineage import LoggedRun
from pipelines.stages.submit import (
    Submission, SubmissionInvalid, SubmissionResult, checked_submission_file, description, earlier_result, log_path,
    log_row, read_rows, settled_log, submission_format, upload, write_log_naming)

OUTPUT_FILE = "submission.csv"
DEFAULT_KERNEL_WAIT_S = 9 * 3600  # a code competition's notebook runs at most 9 hours on Kaggle


def kernel_wait_s() -> float:
    value = os.environ.get("KPIPE_KERNEL_WAIT_S", "")
    try:
        return float(value) if value else DEFAULT_KERNEL_WAIT_S
    except ValueError:
        raise UserError(f"KPIPE_KERNEL_WAIT_S={value!r}: must be a number of seconds") from None


def kernels_folder(spec: CompetitionSpec, package: Package) -> Path:
    """.data/<comp>/kernels/<kernel slug>/: pushed.json, which kernel version was pushed for which package
    (what a rerun follows instead of pushing again), and v<N>/, each version's output and log."""
    return competition_root(spec.name) / "kernels" / package.slug


def submit_through_kernel(spec: CompetitionSpec, submission: Submission, logged: LoggedRun, dry_run: bool = False,
                          resubmit: bool = False) -> SubmissionResult:
    """The code-competition route of the submit stage (see the module's docstring)."""
    with locks.hold(log_path(spec), f"the submissions log of {spec.name}"):
        rows, api = settled_log(spec, dry_run)

        def new_row(result: SubmissionResult, path: Path, kernel: str = "") -> dict:
            return log_row(spec, submission, result, path, kernel)

        if not dry_run:
            earlier = earlier_result(spec, rows, submission.predictions_digest, resubmit, new_row)
            if earlier is not None:
                return earlier
        visible = checked_submission_file(spec, submission.test_ids, submission.test_probs, submission.config_hash)
        package = write_package(spec, logged, competition=spec.kaggle_slug)
        print(f"submit: {spec.name} is a code competition: the kernel predicts its hidden test set; package: "
              f"{describe(package)}")
        if dry_run:
            rows.append(new_row(SubmissionResult("dry-run"), visible))
            write_log_naming(spec, rows, visible)
            return SubmissionResult("dry-run")
        api = api or kaggle_api(spec)
        published = publish_dataset(spec, api, package.dataset, package.ref, package.digest,
                                    f"kpipe run {logged.config_hash}, package {package.digest}")
        print(f"submit: dataset {published.ref} version {published.version}: "
              + ("uploaded" if published.uploaded else "holds this package already, nothing uploaded"))
        version = _push_or_follow(spec, api, package, published.version)
        kernel = f"{package.ref} v{version}, dataset v{published.version}"
        status, failure = wait_for_kernel(spec, api, package.ref, version, kernel_wait_s())
        if status not in ("COMPLETE", "ERROR", "CANCEL_ACKNOWLEDGED"):
            raise KaggleError(f"kernel {package.ref} version {version} is still {status.lower()} after "
                              f"{kernel_wait_s() / 3600:.1f} h; nothing was submitted. Run `make submit COMP={spec.name}` "
                              "again to follow the same kernel")
        folder = kernels_folder(spec, package) / f"v{version}"
        fetch_output(spec, api, package.ref, version, folder)
        if status != "COMPLETE":
            _failed(spec, rows, new_row(SubmissionResult("FAILED"), visible, kernel), visible)
            log = folder / f"{package.slug}.log"
            raise KaggleError(f"kernel {package.ref} version {version} failed on {host_description(spec)}: "
                              f"{failure or status.lower()}; its log ends: {log_tail(log)}; the whole log: {log} "
                              f"(or `kaggle kernels output {package.ref}/{version} -p <folder>`). Nothing was submitted")
        output = folder / OUTPUT_FILE
        try:
            count = _check_output(spec, output, visible)
        except SubmissionInvalid:
            _failed(spec, rows, new_row(SubmissionResult("FAILED"), visible, kernel), visible)
            raise
        print(f"submit: kernel {package.ref} version {version} wrote {output} ({count:,} rows)")
        row = new_row(SubmissionResult("PENDING"), output, kernel)
        message = description(spec, submission)
        return upload(spec, api, rows, row, message, create=lambda: _create_code_submission(
            spec, api, package.ref, version, message))


def _push_or_follow(spec: CompetitionSpec, api, package: Package, dataset_version: int) -> int:
    """The kernel version to wait for: the one pushed for this very package and dataset version, unless it
    failed; else a new push."""
    record = kernels_folder(spec, package) / "pushed.json"
    try:
        earlier = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        earlier = {}
    if earlier.get("package") == package.digest and earlier.get("dataset_version") == dataset_version:
        status, _ = kernel_status(spec, api, package.ref, int(earlier["kernel_version"]))
        if status not in ("ERROR", "CANCEL_ACKNOWLEDGED"):
            print(f"submit: following kernel {package.ref} version {earlier['kernel_version']}, pushed for this "
                  f"package by an earlier run ({status.lower()})")
            return int(earlier["kernel_version"])
    version = push_kernel(spec, api, package.kernel)
    atomic.write_json(record, {"package": package.digest, "dataset_version": dataset_version, "kernel_version": version})
    print(f"submit: pushed kernel {package.ref} version {version}")
    return version


def _failed(spec: CompetitionSpec, rows: list[dict], row: dict, visible: Path) -> None:
    """A FAILED row: the attempt is on record, and nothing of it counts as a submission."""
    rows.append(row)
    write_log_naming(spec, rows, visible)


def _check_output(spec: CompetitionSpec, output: Path, visible: Path) -> int:
    """The kernel's submission file: present, the sample's header, ids once each, every row readable; its
    rows. Where it holds the visible test rows, their labels must be the pipeline's own."""
    if not output.is_file():
        written = sorted(p.name for p in output.parent.iterdir() if p.suffix != ".log") if output.parent.is_dir() else []
        raise SubmissionInvalid(f"the kernel wrote no {OUTPUT_FILE} (its output: {', '.join(written) or 'nothing'}); "
                                "nothing was submitted")
    rows, expected = read_rows(output), read_rows(visible)
    if not rows or rows[0] != expected[0]:
        raise SubmissionInvalid(f"{output}: header {','.join(rows[0]) if rows else '(empty file)'} differs from the "
                                f"sample's {','.join(expected[0])}; nothing was submitted")
    fmt, seen = submission_format(spec), set()
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(expected[0]) or row[0] in seen:
            raise SubmissionInvalid(f"{output} row {line}: {'a duplicate id' if row[0] in seen else 'wrong field count'}; "
                                    "nothing was submitted")
        seen.add(row[0])
        try:
            fmt.parse(row[1:])
        except ValueError as exc:
            raise SubmissionInvalid(f"{output} row {line} (id '{row[0]}'): {exc}; nothing was submitted") from None
    kernel_rows = {row[0]: row[1:] for row in rows[1:]}
    shared = [row for row in expected[1:] if row[0] in kernel_rows]
    differ = [row[0] for row in shared if not _same_prediction(fmt.kind, kernel_rows[row[0]], row[1:])]
    if differ:
        raise SubmissionInvalid(f"{output}: the kernel's predictions for {len(differ)} of the {len(shared)} visible test "
                                f"rows differ from the pipeline's (first: id '{differ[0]}'); nothing was submitted")
    if shared:
        print(f"submit: the kernel agrees with the pipeline on the {len(shared)} visible test rows")
    return len(rows) - 1


def _same_prediction(kind: str, a: list[str], b: list[str]) -> bool:
    """Labels character for character; probabilities to 1e-4 (the two writers format them differently)."""
    if kind != "probabilities":
        return a == b
    return all(abs(float(x) - float(y)) < 1e-4 for x, y in zip(a, b))


def _create_code_submission(spec: CompetitionSpec, api, ref: str, version: int, message: str):
    """`competitions submit -k ref -v version -f submission.csv`: (ref, None), or (None, the failure)."""
    try:
        response = call(spec, f"submitting the output of kernel {ref} version {version}",
                        lambda: api.competition_submit_code(OUTPUT_FILE, message, spec.kaggle_slug, kernel=ref,
                                                            kernel_version=version, quiet=True), retry=False)
    except KaggleError as exc:
        return None, exc
    if getattr(response, "ref", None):
        return int(response.ref), None
    return None, KaggleError(f"submitting kernel {ref} version {version} failed: {getattr(response, 'message', '')}")
