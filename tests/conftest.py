"""Shared fixtures: a real local Kaggle host on a free loopback port, environments that point the
unmodified kaggle client (CLI and Python API) at it — and can never reach the real kaggle.com — and a
throw-away PostgreSQL server of the tests' own."""
from __future__ import annotations

import glob
import json
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from competition.host.server import serve_in_thread
from competition.host.store import HostStore
from competition.paths import REPO_ROOT

DEAD_PROXY = "http://127.0.0.1:9"  # HTTPS goes nowhere: a test can never talk to the real Kaggle
KAGGLE_ENV_VARS = ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy",
                   "KAGGLE_API_ENVIRONMENT", "KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_CONFIG_DIR")


@dataclass
class Host:
    store: HostStore
    port: int

    @property
    def root(self) -> Path:
        return self.store.root

    @property
    def client_dir(self) -> Path:
        return self.root / "client"


@pytest.fixture(scope="session")
def host(tmp_path_factory) -> Host:
    # Scored submissions show at once here; tests of the PENDING state set a delay of their own
    # (scoring_delay), as `make submit` meets the host's default.
    os.environ["KPIPE_HOST_SCORING_DELAY_S"] = "0"
    store = HostStore(tmp_path_factory.mktemp("host"))
    server, _ = serve_in_thread(store, port=0)
    yield Host(store, server.server_address[1])
    server.shutdown()
    server.server_close()


@pytest.fixture
def scoring_delay(monkeypatch):
    """Set how long the test host keeps a new submission PENDING, for one test."""
    def set_delay(seconds: float) -> None:
        monkeypatch.setenv("KPIPE_HOST_SCORING_DELAY_S", str(seconds))

    return set_delay


@pytest.fixture
def cli_env(host, tmp_path) -> dict:
    """Environment for running the `kaggle` CLI as a user would, against the test host."""
    env = {k: v for k, v in os.environ.items() if k not in KAGGLE_ENV_VARS}
    home = tmp_path / "home"
    home.mkdir()
    env.update(HOME=str(home), KAGGLE_CONFIG_DIR=str(host.client_dir), KAGGLE_API_ENVIRONMENT="LOCALHOST",
               HTTP_PROXY=f"http://127.0.0.1:{host.port}", HTTPS_PROXY=DEAD_PROXY)
    return env


@pytest.fixture
def run_kaggle(cli_env, tmp_path):
    """Run the installed `kaggle` console script; returns CompletedProcess (text)."""
    kaggle_bin = Path(sys.executable).with_name("kaggle")

    def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([str(kaggle_bin), *args], env=env or cli_env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)

    return run


@pytest.fixture(autouse=True)
def cores_given_back():
    """A test that trained in this process leaves the core registry when it ends: pytest idles between
    tests and while the commands a test starts compute, and an idle member would halve their threads.
    (A command leaves its own share; a test that builds a context or a runtime itself does not.)"""
    yield
    import gc

    from pipelines.machine.cores import CoreShare

    for share in [o for o in gc.get_objects() if type(o) is CoreShare and o.joined]:
        share.leave()


@pytest.fixture
def pipeline_env(host, tmp_path, monkeypatch) -> Path:
    """Point the pipeline (in this process) at the test host and a private data folder; returns the data root."""
    for name in KAGGLE_ENV_VARS:
        # setenv first so monkeypatch restores these even if the adapter sets them later.
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    monkeypatch.setenv("HTTPS_PROXY", DEAD_PROXY)
    monkeypatch.setenv("KPIPE_HOST_ROOT", str(host.root))
    monkeypatch.setenv("KPIPE_LOCAL_HOST_PORT", str(host.port))
    monkeypatch.setenv("KPIPE_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KPIPE_KAGGLE_BACKOFF_S", "0.05")  # retries stay real, the waits short
    return tmp_path / "data"


def write_course_competition(folder: Path, slug: str, max_daily: int = 2, metric="accuracy") -> dict[str, str]:
    """A tiny competition of one's own (6 test ids; labels a/b alternating, or a/b/c for a metric scored
    on probabilities, whose sample submission has one column per class: p_a, p_b, p_c); returns the
    hidden truth."""
    probabilities = metric in ("log_loss", "roc_auc")
    labels = ["a", "b", "c"] if probabilities else ["a", "b"]
    truth = {f"t{i}": labels[i % len(labels)] for i in range(6)}
    (folder / "data").mkdir(parents=True)
    (folder / "competition.json").write_text(json.dumps({
        "slug": slug, "title": "Tiny course competition", "labels": labels, "id_column": "id",
        "label_column": "label", "max_daily_submissions": max_daily, "metric": metric}))
    sample = ("id,p_a,p_b,p_c\n" + "".join(f"{i},0.4,0.3,0.3\n" for i in truth) if probabilities
              else "id,label\n" + "".join(f"{i},a\n" for i in truth))
    (folder / "data" / "sample_submission.csv").write_text(sample)
    (folder / "solution.csv").write_text("id,label,Usage\n" + "".join(
        f"{i},{label},{'Public' if n < 3 else 'Private'}\n" for n, (i, label) in enumerate(truth.items())))
    return truth


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def scheduler_with_one_worker(tmp_path):
    """`dask scheduler` and one `dask worker` on 127.0.0.1, as on machines sharing a disk."""
    dask = shutil.which("dask", path=str(Path(sys.executable).parent))
    address = f"tcp://127.0.0.1:{free_port()}"
    logs = open(tmp_path / "dask.log", "w")
    scheduler = subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1],
                                  "--no-dashboard"], stdout=logs, stderr=logs)
    worker = subprocess.Popen([dask, "worker", address, "--nthreads", "1", "--resources", "unit=1", "--no-dashboard",
                               "--name", "remote-1"], stdout=logs, stderr=logs, cwd=REPO_ROOT,
                              env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    from distributed import Client

    deadline = time.monotonic() + 60
    while True:
        try:
            with Client(address, timeout="2s") as client:
                if client.scheduler_info()["workers"]:
                    break
        except OSError:
            pass
        assert time.monotonic() < deadline, (tmp_path / "dask.log").read_text()[-2000:]
        time.sleep(0.5)
    yield address
    for process in (worker, scheduler):
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="session")
def postgres_url():
    """A PostgreSQL server started for this test session in a temporary folder, with a password-protected
    role, on a free loopback port; or the server named by KPIPE_TEST_POSTGRES_URL.

    As root, the server runs as the `postgres` user (initdb refuses root), through runuser."""
    if os.environ.get("KPIPE_TEST_POSTGRES_URL"):
        yield os.environ["KPIPE_TEST_POSTGRES_URL"]
        return
    bin_dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(Path(d).parent.name))
    if not bin_dirs:
        pytest.skip("PostgreSQL is not installed: `make test` installs it (Debian package postgresql)")
    bin_dir = Path(bin_dirs[-1])
    base = Path(tempfile.mkdtemp(prefix="kpipe-test-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(base, owner.pw_uid, owner.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    password = secrets.token_hex(8)
    (base / "pw").write_text(password + "\n")
    if as_user:
        os.chown(base / "pw", owner.pw_uid, owner.pw_gid)
    port = free_port()

    def run(*argv: str) -> None:
        result = subprocess.run([*as_user, *argv], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"{argv[0]} failed: {result.stderr[-800:]}"

    run(str(bin_dir / "initdb"), "-D", str(base / "data"), "-U", "kpipe", f"--pwfile={base / 'pw'}", "-E", "UTF8",
        "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync")
    run(str(bin_dir / "pg_ctl"), "-D", str(base / "data"), "-l", str(base / "server.log"), "-w", "-t", "60",
        "-o", f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
    try:
        run(str(bin_dir / "createdb"), "-h", str(base), "-p", str(port), "-U", "kpipe", "kpipe_test")
        yield f"postgresql://kpipe:{password}@127.0.0.1:{port}/kpipe_test"
    finally:
        subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(base / "data"), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)


KERNEL_VENV_PACKAGES = ("numpy", "pandas", "pillow", "safetensors")


@pytest.fixture(scope="session")
def kernel_python() -> str:
    """A Python with only what an exported inference script declares (torch, numpy, pandas, pillow,
    safetensors), as a Kaggle image offers, and no kpipe: built once and kept outside the clone
    ($KPIPE_KERNEL_VENV, default ~/.cache/kpipe-kernel-venv), as CI keeps its venv. Its torch is an older
    release than the pipeline's where the package index has one, so the script is tested on older torch."""
    from competition import locks

    folder = Path(os.environ.get("KPIPE_KERNEL_VENV") or Path.home() / ".cache" / "kpipe-kernel-venv")
    python = folder / "bin" / "python"
    with locks.hold(folder, "the kernel test venv"):
        if not (folder / ".complete").is_file():
            shutil.rmtree(folder, ignore_errors=True)
            subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True, timeout=300)
            pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
            older = subprocess.run([*pip, "torch<2.14", *KERNEL_VENV_PACKAGES], capture_output=True, text=True, timeout=1200)
            if older.returncode != 0:
                subprocess.run([*pip, "torch", *KERNEL_VENV_PACKAGES], check=True, timeout=1200)
            (folder / ".complete").write_text("")
    return str(python)


@pytest.fixture(scope="session")
def kaggle_image_python(tmp_path_factory) -> str:
    """A stand-in for a Kaggle notebook's Python: a venv that holds torch, torchvision and the rest of this
    environment except kpipe and everything kpipe needs (linked, not installed: a second), so that kpipe
    only runs there once installed from its wheelhouse. Its links point into this environment, which a
    kernel's user may not enter when it lies under /root: KPIPE_KERNEL_LEND lends it (set by the test)."""
    import importlib.metadata as metadata

    from pipelines.tools.wheelhouse import _key, pinned_requirements

    kpipe_needs = {pin.split("==")[0] for pin in pinned_requirements()} | {"kpipe"}
    root = tmp_path_factory.mktemp("kaggle-image")
    layer = root / "image-site"
    layer.mkdir()
    for dist in metadata.distributions():
        if _key(dist.metadata["Name"]) in kpipe_needs:
            continue
        for top in {f.parts[0] for f in dist.files or [] if f.parts[0] not in ("..", "bin")}:
            source = Path(dist.locate_file(top))
            if source.exists() and not (layer / top).exists():
                (layer / top).symlink_to(source)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], check=True, timeout=120)
    [site_packages] = (root / "venv" / "lib").glob("python*/site-packages")
    (site_packages / "kaggle-image.pth").write_text(f"{layer}\n")
    return str(root / "venv" / "bin" / "python")
