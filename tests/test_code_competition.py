"""The local host's code-competition calls through the unmodified `kaggle` CLI: datasets, script
kernels run offline with a Kaggle-like /kaggle/input, and submissions of a kernel's output."""
from __future__ import annotations

import json
import os
import sys
import time

import pytest

from competition.host.code_store import CodeHost

pytestmark = pytest.mark.slow  # every test here runs a kernel or builds its venv

KERNEL_SCRIPT = """
import os, socket, sys
from pathlib import Path

root = Path(os.environ["KAGGLE_INPUT_ROOT"])
sample = (root / "digits-code" / "sample_submission.csv").read_text().splitlines()
note = (root / "{dataset}" / "note.txt").read_text().strip()
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=3).close()
    network = "reachable"
except OSError:
    network = "blocked"
Path("facts.txt").write_text(f"rows={{len(sample) - 1}} note={{note}} network={{network}}")
Path("submission.csv").write_text(sample[0] + "\\n" + "".join(line.split(",")[0] + ",{label}\\n" for line in sample[1:]))
print("kernel done")
"""


def _dataset(folder, owner: str, slug: str) -> None:
    folder.mkdir()
    (folder / "note.txt").write_text("hello from a dataset\n")
    (folder / "dataset-metadata.json").write_text(json.dumps(
        {"title": "A test dataset", "id": f"{owner}/{slug}", "licenses": [{"name": "CC0-1.0"}]}))


def _kernel(folder, owner: str, slug: str, script: str, **changes) -> None:
    folder.mkdir()
    (folder / "run.py").write_text(script)
    (folder / "kernel-metadata.json").write_text(json.dumps({
        "id": f"{owner}/{slug}", "title": slug, "code_file": "run.py", "language": "python", "kernel_type": "script",
        "is_private": True, "enable_gpu": False, "enable_internet": False, "dataset_sources": [],
        "competition_sources": ["digits-code"], "kernel_sources": [], "model_sources": [], **changes}))


def _wait(run_kaggle, ref: str, timeout_s: float = 120) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        out = run_kaggle("kernels", "status", ref).stdout
        if "COMPLETE" in out or "ERROR" in out or time.monotonic() > deadline:
            return out
        time.sleep(0.5)


@pytest.fixture
def owner(host) -> str:
    return host.store.credentials()["username"]


def test_a_kernel_runs_offline_on_the_hidden_test_set_and_its_output_is_scored(run_kaggle, host, tmp_path, owner,
                                                                                monkeypatch):
    monkeypatch.setenv("KPIPE_KERNEL_PYTHON", sys.executable)
    _dataset(tmp_path / "ds", owner, "kernel-test-notes")
    created = run_kaggle("datasets", "create", "-p", str(tmp_path / "ds"))
    assert created.returncode == 0 and "is being created" in created.stdout, created.stdout + created.stderr
    assert run_kaggle("datasets", "status", f"{owner}/kernel-test-notes").stdout.strip() == "ready"
    assert f"{owner}/kernel-test-notes" in run_kaggle("datasets", "list", "-m").stdout
    again = run_kaggle("datasets", "create", "-p", str(tmp_path / "ds"))
    assert "already in use" in again.stdout + again.stderr

    script = KERNEL_SCRIPT.format(dataset="kernel-test-notes", port=host.port, label="7")
    _kernel(tmp_path / "k", owner, "kernel-test-run", script, dataset_sources=[f"{owner}/kernel-test-notes"],
            enable_gpu=True)
    pushed = run_kaggle("kernels", "push", "-p", str(tmp_path / "k"))
    assert "Kernel version 1 successfully pushed" in pushed.stdout, pushed.stdout + pushed.stderr
    assert 'KernelWorkerStatus.COMPLETE' in _wait(run_kaggle, f"{owner}/kernel-test-run")
    out = tmp_path / "out"
    fetched = run_kaggle("kernels", "output", f"{owner}/kernel-test-run", "-p", str(out))
    assert fetched.returncode == 0, fetched.stderr
    # The kernel saw the whole hidden test set (450 rows; a download holds 20), its dataset, and no network.
    assert (out / "facts.txt").read_text() == "rows=450 note=hello from a dataset network=blocked"
    log = (out / "kernel-test-run.log").read_text()
    assert "kernel done" in log
    # It asked for a GPU: recorded, and its log says what it ran on.
    assert CodeHost(host.store).kernel(owner, "kernel-test-run")["accelerator"] == "gpu"
    assert ("this machine has no GPU, so it runs on CPU" in log) != ("runs on this machine's GPU" in log), log
    downloaded = run_kaggle("competitions", "files", "digits-code").stdout
    assert "sample_submission.csv" in downloaded

    submitted = run_kaggle("competitions", "submit", "digits-code", "-k", f"{owner}/kernel-test-run", "-v", "1",
                           "-f", "submission.csv", "-m", "all sevens")
    assert "Successfully submitted" in submitted.stdout, submitted.stdout + submitted.stderr
    [mine] = [s for s in host.store.submissions("digits-code") if s["description"] == "all sevens"]
    assert mine["status"] == "COMPLETE" and 0.05 < mine["public_score"] < 0.2  # one class of ten

    # A CSV upload to a code competition is refused with the way in; so is an output the kernel did not write.
    (tmp_path / "s.csv").write_text((out / "submission.csv").read_text())
    refused = run_kaggle("competitions", "submit", "digits-code", "-f", str(tmp_path / "s.csv"), "-m", "csv")
    assert refused.returncode == 1 and "code competition" in refused.stderr and "-k <owner>/<kernel>" in refused.stderr
    missing = run_kaggle("competitions", "submit", "digits-code", "-k", f"{owner}/kernel-test-run", "-v", "1",
                         "-f", "nope.csv", "-m", "x")
    assert missing.returncode == 1 and "did not write 'nope.csv'" in missing.stderr


def test_kernels_are_refused_or_stopped_with_kaggle_like_messages(run_kaggle, host, tmp_path, owner, monkeypatch):
    monkeypatch.setenv("KPIPE_KERNEL_PYTHON", sys.executable)
    monkeypatch.setenv("KPIPE_KERNEL_TIMEOUT_S", "3")
    _kernel(tmp_path / "unknown", owner, "kernel-test-bad", "print(1)", dataset_sources=[f"{owner}/no-such-dataset"])
    pushed = run_kaggle("kernels", "push", "-p", str(tmp_path / "unknown"))
    assert "Kernel push error:" in pushed.stdout and "no-such-dataset" in pushed.stdout, pushed.stdout

    _kernel(tmp_path / "slow", owner, "kernel-test-slow", "import time\ntime.sleep(60)\n")
    assert "successfully pushed" in run_kaggle("kernels", "push", "-p", str(tmp_path / "slow")).stdout
    status = _wait(run_kaggle, f"{owner}/kernel-test-slow", timeout_s=60)
    assert "ERROR" in status and "time limit of 3 s" in status, status

    _kernel(tmp_path / "online", owner, "kernel-test-online", "open('submission.csv', 'w').write('id,label\\n')\n",
            enable_internet=True)
    assert "successfully pushed" in run_kaggle("kernels", "push", "-p", str(tmp_path / "online")).stdout
    assert "COMPLETE" in _wait(run_kaggle, f"{owner}/kernel-test-online")
    online = run_kaggle("competitions", "submit", "digits-code", "-k", f"{owner}/kernel-test-online", "-v", "1",
                        "-f", "submission.csv", "-m", "x")
    assert online.returncode == 1 and "internet access enabled" in online.stderr

    # Output URLs carry no credentials; a wrong token finds nothing.
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as refused:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        opener.open(f"http://127.0.0.1:{host.port}/outputs/{'x' * 32}/submission.csv", timeout=10)
    assert refused.value.code == 404


HOSTILE_SCRIPT = """
import os
from pathlib import Path

solution = Path({solution!r})
Path("facts.txt").write_text(f"uid={{os.getuid()}} host_root={{sorted(os.listdir({root!r}))}}")
print(solution.read_text()[:100])
"""


@pytest.fixture
def enterable_host_root(host):
    """Every folder above the host's enterable by any user, as a host under a careless home would be, so
    that what stops a kernel is its sandbox and not the test's temporary folders (restored after)."""
    changed = []
    for folder in host.root.parents:
        mode = folder.stat().st_mode
        if not mode & 0o001:
            folder.chmod((mode & 0o7777) | 0o011)
            changed.append((folder, mode & 0o7777))
    yield
    for folder, mode in changed:
        folder.chmod(mode)


def test_a_kernel_cannot_read_the_hosts_solution(run_kaggle, host, tmp_path, owner, monkeypatch, enterable_host_root):
    monkeypatch.setenv("KPIPE_KERNEL_PYTHON", sys.executable)
    solution = host.store.competition_dir("digits-code") / "solution.csv"
    assert solution.is_file()
    _kernel(tmp_path / "k", owner, "kernel-test-hostile", HOSTILE_SCRIPT.format(solution=str(solution), root=str(host.root)))
    assert "successfully pushed" in run_kaggle("kernels", "push", "-p", str(tmp_path / "k")).stdout
    status = _wait(run_kaggle, f"{owner}/kernel-test-hostile")
    assert "ERROR" in status, status
    out = tmp_path / "out"
    assert run_kaggle("kernels", "output", f"{owner}/kernel-test-hostile", "-p", str(out)).returncode == 0
    # The host's folder is an empty mount in the kernel's view (not a folder it merely may not read), and a
    # host running as root runs the kernel as another user.
    facts = (out / "facts.txt").read_text()
    assert "host_root=[]" in facts, facts
    assert (facts.startswith("uid=61000") if os.geteuid() == 0 else True), facts
    assert "FileNotFoundError" in (out / "kernel-test-hostile.log").read_text()
