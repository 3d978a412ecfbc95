"""The machine's cores, shared by the kpipe processes computing on it at once.

Why: torch sizes its OpenMP pool to every core, and two such processes on two cores ran a small CNN's
training steps 80x slower each (19,769 img/s alone, 241 each side by side: every idle OpenMP thread
spin-waits for work while the other process holds the core it needs). With one thread each the pair
ran at 0.76x of the lone process each, 1.5x together. So every process that computes registers here,
takes its share of the cores, and re-reads the registry between training and inference steps (at most
four times a second) to shrink or grow as others come and go.

What the libraries offer is used for the pools: `torch.set_num_threads` (torch's OpenMP and MKL) and
`threadpoolctl` (NumPy's and SciPy's BLAS). OpenMP's passive wait policy was measured and left at its
default: it softens the collapse (12,000 img/s each) but costs a lone process 2.3x, the common case.

The registry is <data>/.cores/ (`KPIPE_CORES_DIR` moves it, e.g. to share one budget between data
folders): one JSON entry per share, `<host>-<pid>-<tag>.json`, beside its `.lock`, an OS lock the
process holds while the share lives. The kernel drops that lock when the process dies, so an entry whose lock
can be taken is dead and is removed by whoever notices. Changes are made under `registry.lock`. Entries
of other hosts (a data folder on a disk several machines share) do not count: each machine has its own
cores.

Policy (`CORES=` of make, `KPIPE_CORES`): `share` (default) takes a fair share at once, the processes
already computing give up threads at their next step; `wait` waits, saying for whom, until the others
leave a core free. `THREADS=n` (`KPIPE_THREADS`) caps this process's threads.
"""
from __future__ import annotations

import atexit
import contextlib
import json
import math
import os
import secrets
import socket
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from filelock import FileLock, Timeout

from competition import atomic
from competition.errors import UserError
from competition.paths import data_root

POLICIES = ("share", "wait")
CHECK_SECONDS = 0.25  # how often a computing process looks at the registry (a directory listing)
WAIT_POLL_SECONDS = 1.0


@dataclass(frozen=True)
class Entry:
    name: str  # <host>-<pid>-<tag>: the file stem
    pid: int
    host: str
    command: str
    since: float  # when it joined (time.time()), for the order of shares and of waiters
    state: str  # "running" or "waiting"
    cap: int  # the most threads it wants


def machine_cores() -> int:
    """Cores this process may run on: its CPU affinity, bounded by a cgroup's CPU quota (containers)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def fair_shares(caps: list[int], cores: int) -> list[int]:
    """Threads for each running process, in join order: one each, then the spare cores dealt round-robin,
    earliest first, to those under their cap. More processes than cores: one thread each."""
    shares = [1] * len(caps)
    spare = cores - len(caps)
    while spare > 0 and any(s < c for s, c in zip(shares, caps)):
        for i, cap in enumerate(caps):
            if spare > 0 and shares[i] < cap:
                shares[i] += 1
                spare -= 1
    return shares


def policy() -> str:
    value = os.environ.get("KPIPE_CORES", "share")
    if value not in POLICIES:
        raise UserError(f"CORES={value}: unknown; use one of {', '.join(POLICIES)}")
    return value


def thread_cap(cores: int) -> int:
    value = os.environ.get("KPIPE_THREADS")
    if not value:
        return cores
    if not value.isdigit() or int(value) < 1:
        raise UserError(f"THREADS={value}: must be a whole number of threads, at least 1")
    return min(int(value), cores)


def check_settings() -> None:
    """CORES= and THREADS= as the command starts, before any download or training."""
    policy()
    thread_cap(machine_cores())


def registry_dir() -> Path:
    return Path(os.environ.get("KPIPE_CORES_DIR") or data_root() / ".cores")


def _is_alive(folder: Path, name: str) -> bool:
    """Whether the process of entry `name` still holds its lock."""
    probe = FileLock(folder / f"{name}.lock", is_singleton=False)
    try:
        probe.acquire(timeout=0)
    except Timeout:
        return True
    probe.release()
    return False


def _read(path: Path) -> Entry | None:
    try:
        return Entry(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None  # being replaced right now, or not ours: skip it this time


def live_entries(folder: Path, own: str | None = None) -> list[Entry]:
    """This host's live entries, in join order; dead ones are removed on the way."""
    host = socket.gethostname()
    entries = []
    for path in sorted(folder.glob(f"{host}-*.json")):
        entry = _read(path)
        if entry is None or entry.host != host:
            continue
        if entry.name != own and not _is_alive(folder, entry.name):
            with contextlib.suppress(OSError):
                path.unlink()
                (folder / f"{entry.name}.lock").unlink()
            continue
        entries.append(entry)
    return sorted(entries, key=lambda e: (e.since, e.pid))


def describe(entries: list[Entry]) -> str:
    return "; ".join(f"pid {e.pid} ({e.command}) since {time.strftime('%H:%M:%S', time.localtime(e.since))}"
                     for e in entries)


def _apply(threads: int) -> None:
    """Size torch's pool, and NumPy's/SciPy's BLAS, to `threads`. Call from the thread that computes:
    OpenMP keeps the thread count per calling thread."""
    torch.set_num_threads(threads)
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads, user_api="blas")


class CoreShare:
    """This process's share of the machine's cores, from `join` to `leave`: its entry in the registry,
    the lock that says it lives, and the threads it runs with. The command that computes owns it (the
    CLI makes one per command and leaves at its end; a Runtime made without one owns its own), and every
    loop that computes calls `follow` between steps. Joining again after `leave` takes a new share."""

    def __init__(self, folder: Path | None = None):
        self.folder = folder or registry_dir()
        self.cores = machine_cores()
        self.cap_threads = thread_cap(self.cores)
        # Unique in this process too: a test, a tool or a Dask worker may make a share beside the CLI's.
        self.name = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.lock = FileLock(self.folder / f"{self.name}.lock", is_singleton=False)
        self.joined = False
        self.current = 0  # threads while joined
        self.since = 0.0
        self.next_check = 0.0
        self.listing: tuple[str, ...] = ()
        atexit.register(self.leave)

    @property
    def threads(self) -> int:
        """This process's current share (every core while it has not joined)."""
        return self.current if self.joined else self.cores

    def sharing(self) -> bool:
        """Whether this process has fewer threads than the machine has cores because others compute."""
        return self.joined and self.current < min(self.cap_threads, self.cores)

    def join(self) -> int:
        """Register as computing and size the pools to this share; returns the threads."""
        if self.joined:
            return self.current
        self.folder.mkdir(parents=True, exist_ok=True)
        self.lock.acquire()
        self.joined, self.since, self.current, self.listing = True, time.time(), 0, ()
        if policy() == "wait":
            self._write("waiting")
            self._wait_turn()
        self._write("running")
        self.rebalance(announce=True)
        return self.current

    def cap(self, most: int) -> None:
        """Use at most `most` threads from now on (a process that starts workers of its own keeps their
        share free for them while they start)."""
        self.cap_threads = min(self.cap_threads, max(1, most))
        if self.joined:
            self._write("running")
            self.rebalance()

    def _write(self, state: str) -> None:
        entry = Entry(self.name, os.getpid(), socket.gethostname(), " ".join(Path(a).name for a in sys.argv[:5])[:160],
                      self.since, state, self.cap_threads)
        with FileLock(self.folder / "registry.lock", is_singleton=False):
            atomic.write_json(self.folder / f"{self.name}.json", asdict(entry))

    def _wait_turn(self) -> None:
        """Until the running processes leave a core free and no earlier waiter is ahead of this one."""
        said = False
        while True:
            entries = live_entries(self.folder, own=self.name)
            running = [e for e in entries if e.state == "running"]
            waiters = [e for e in entries if e.state == "waiting"]
            free = self.cores - sum(min(e.cap, self.cores) for e in running)
            if free > 0 and waiters[0].name == self.name:  # first in line (its own entry is among the waiters)
                return
            if not said:
                whom = describe(running) if running else describe(waiters[:1]) + " (waiting before this one)"
                print(f"cores: waiting for a free core of this machine's {self.cores}: {whom}; "
                      f"CORES=share runs now beside them at a fair share", file=sys.stderr, flush=True)
                said = True
            time.sleep(WAIT_POLL_SECONDS)

    def listing_now(self) -> tuple[str, ...]:
        return tuple(sorted(p.name for p in self.folder.glob("*.json")))

    def rebalance(self, announce: bool = False, listing: tuple[str, ...] | None = None) -> None:
        """Take up this process's share of the running entries; `listing`: the registry's files, when the
        caller has just listed them."""
        entries = [e for e in live_entries(self.folder, own=self.name) if e.state == "running"]
        self.listing = listing if listing is not None else self.listing_now()
        names = [e.name for e in entries]
        if self.name not in names:  # removed by hand: join again
            if not Path(self.lock.lock_file).exists():  # the lock went with it: others would think this process dead
                self.lock.release()
                self.lock.acquire()
            self._write("running")
            return self.rebalance(announce)
        threads = fair_shares([e.cap for e in entries], self.cores)[names.index(self.name)]
        if threads != self.current:
            _apply(threads)
            others = [e for e in entries if e.name != self.name]
            if others and (announce or threads < self.current):
                print(f"cores: {threads} of this machine's {self.cores} cores here, sharing with {len(others)} other "
                      f"kpipe process{'es' if len(others) > 1 else ''}: {describe(others)}", file=sys.stderr, flush=True)
            self.current = threads

    def follow(self) -> None:
        """Between steps of long work: take up a changed share (cheap; most calls return at once)."""
        if not self.joined:
            return
        now = time.monotonic()
        if now < self.next_check:
            return
        self.next_check = now + CHECK_SECONDS
        try:
            listing = self.listing_now()
            # A new or departed entry changes the listing; a dead one does not, so look at liveness too
            # whenever someone else is registered.
            if listing != self.listing or len(listing) > 1:
                self.folder.mkdir(parents=True, exist_ok=True)  # the data folder removed under a run: register again
                self.rebalance(listing=listing)
        except OSError:
            pass  # a registry that cannot be read this time (removed, full disk) keeps the current share

    def leave(self) -> None:
        """No more computing here (a process that only waits for workers, say): give the cores back."""
        if not self.joined:
            return
        self.joined = False
        with contextlib.suppress(OSError):
            with FileLock(self.folder / "registry.lock", is_singleton=False):
                (self.folder / f"{self.name}.json").unlink()
        self.lock.release()
        with contextlib.suppress(OSError):
            (self.folder / f"{self.name}.lock").unlink()
