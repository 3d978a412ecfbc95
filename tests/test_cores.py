"""The machine's cores shared between kpipe processes (pipelines/machine/cores.py): real processes joining,
leaving, dying and waiting, each reading its own torch thread count."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from competition.paths import REPO_ROOT
from pipelines.machine import cores

# A process that computes the way training does: join, then small steps, following the registry between
# them; it prints its torch thread count whenever that changes, and stops when <stop> appears.
WORKER = """
import sys, time, torch
from pathlib import Path
from pipelines.machine.cores import CoreShare
stop = Path(sys.argv[1])
share = CoreShare()
print("joined", share.join(), flush=True)
seen, a = torch.get_num_threads(), torch.randn(96, 96)
while not stop.exists():
    share.follow()
    for _ in range(20):
        a = torch.tanh(a @ a)
    if torch.get_num_threads() != seen:
        seen = torch.get_num_threads()
        print("threads", seen, flush=True)
"""

CORES = cores.machine_cores()
needs_two = pytest.mark.skipif(CORES < 2, reason="sharing needs at least two cores")


STARTED: list[subprocess.Popen] = []  # this module's worker processes, killed after each test


@pytest.fixture(autouse=True)
def no_worker_outlives_its_test():
    """A failing assertion must not leave a worker spinning on a core beside the rest of the suite."""
    yield
    while STARTED:
        process = STARTED.pop()
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


class Worker:
    def __init__(self, tmp: Path, name: str, **env: str):
        self.stop = tmp / f"stop-{name}"
        self.out = open(tmp / f"{name}.out", "w+")
        self.err = tmp / f"{name}.err"
        self.process = subprocess.Popen([sys.executable, "-c", WORKER, str(self.stop)], cwd=REPO_ROOT,
                                        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **env},
                                        stdout=self.out, stderr=open(self.err, "w"))
        STARTED.append(self.process)
        self.out_path = tmp / f"{name}.out"

    def lines(self) -> list[str]:
        return self.out_path.read_text().splitlines()

    def threads(self) -> int | None:
        """The latest thread count it reported (None before it joined)."""
        counts = [int(line.split()[1]) for line in self.lines() if line.split()[0] in ("joined", "threads")]
        return counts[-1] if counts else None

    def wait_for(self, threads: int, seconds: float = 30) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.threads() == threads:
                return
            assert self.process.poll() is None, self.err.read_text()
            time.sleep(0.05)
        raise AssertionError(f"expected {threads} threads, saw {self.lines()}; stderr: {self.err.read_text()}")

    def finish(self) -> None:
        self.stop.touch()
        self.process.wait(timeout=30)


@pytest.fixture
def registry(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cores"
    monkeypatch.setenv("KPIPE_CORES_DIR", str(folder))
    monkeypatch.delenv("KPIPE_CORES", raising=False)
    monkeypatch.delenv("KPIPE_THREADS", raising=False)
    return folder


def test_fair_shares_deal_every_core_once_earliest_first():
    assert cores.fair_shares([2], 2) == [2]
    assert cores.fair_shares([2, 2], 2) == [1, 1]
    assert cores.fair_shares([8, 8, 8], 8) == [3, 3, 2]
    assert cores.fair_shares([1, 8], 8) == [1, 7]  # a capped process leaves its cores to the others
    assert cores.fair_shares([2, 2, 2], 2) == [1, 1, 1]  # more processes than cores: one thread each


@pytest.mark.slow
@needs_two
def test_a_second_process_takes_a_fair_share_and_the_first_gives_it_back_on_exit_or_death(registry, tmp_path):
    first = Worker(tmp_path, "first")
    first.wait_for(CORES)
    second = Worker(tmp_path, "second")
    second.wait_for(CORES // 2)
    first.wait_for(CORES - CORES // 2)  # the earlier one gets the odd core
    assert "sharing with 1 other kpipe process" in second.err.read_text()
    second.process.send_signal(signal.SIGKILL)  # no goodbye: its OS lock is gone, so its entry is dead
    second.process.wait()
    first.wait_for(CORES)
    assert [p.name.rsplit("-", 1)[0] for p in registry.glob("*.json")] == [f"{os.uname().nodename}-{first.process.pid}"]
    third = Worker(tmp_path, "third")
    third.wait_for(CORES // 2)
    first.wait_for(CORES - CORES // 2)
    third.finish()  # a clean exit removes its entry at once
    first.wait_for(CORES)
    first.finish()
    assert list(registry.glob("*.json")) == []


@pytest.mark.slow
@needs_two
def test_a_thread_cap_leaves_the_rest_to_the_others(registry, tmp_path):
    capped = Worker(tmp_path, "capped", KPIPE_THREADS="1")
    capped.wait_for(1)
    other = Worker(tmp_path, "other")
    other.wait_for(CORES - 1)
    capped.finish()
    other.wait_for(CORES)
    other.finish()


@pytest.mark.slow
def test_wait_policy_queues_until_the_running_process_leaves(registry, tmp_path):
    running = Worker(tmp_path, "running")
    running.wait_for(CORES)
    waiting = Worker(tmp_path, "waiting", KPIPE_CORES="wait")
    deadline = time.monotonic() + 30
    while "waiting for a free core" not in waiting.err.read_text():
        assert time.monotonic() < deadline and waiting.process.poll() is None, waiting.err.read_text()
        time.sleep(0.05)
    message = waiting.err.read_text().strip()
    assert len(message.splitlines()) == 1 and f"pid {running.process.pid}" in message and "CORES=share" in message
    time.sleep(1.5)
    assert waiting.threads() is None  # still queued
    running.finish()
    waiting.wait_for(CORES)  # alone now: every core
    waiting.finish()


@pytest.mark.slow
@pytest.mark.parametrize("env, fix", [({"KPIPE_CORES": "greedy"}, "CORES=greedy: unknown; use one of share, wait"),
                                      ({"KPIPE_THREADS": "two"}, "THREADS=two: must be a whole number")])
def test_bad_settings_are_one_line_before_any_work(registry, tmp_path, env, fix):
    result = subprocess.run([sys.executable, "-m", "pipelines", "prepare", "--comp", "digits"], cwd=REPO_ROOT,
                            env={**os.environ, "KPIPE_DATA": str(tmp_path / "data"), **env}, capture_output=True, text=True)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {fix}")
    assert not (tmp_path / "data" / "digits").exists()
