"""The one door to the Kaggle API: an authenticated `KaggleApi` for a competition spec's host.

`host: kaggle` uses the real Kaggle with the user's own credentials (~/.kaggle/kaggle.json or
KAGGLE_USERNAME/KAGGLE_KEY), exactly as the `kaggle` CLI does.

`host: local` uses the project's local host (`make serve`). >>> THE ONE PLACE THAT REDIRECTS THE CLIENT <<<
- `KAGGLE_API_ENVIRONMENT=LOCALHOST` makes kaggle 2.2.x send every call to http://localhost (port 80);
- when the host listens elsewhere ($KPIPE_LOCAL_HOST_PORT), HTTP_PROXY=http://127.0.0.1:<port> carries the
  same requests there (the host strips the scheme and host from the proxied request line);
- credentials come from the host's own client config (<host root>/client/kaggle.json), never ~/.kaggle.

Every call the pipeline makes goes through `call()`: a timeout on every socket read (the client sets
none, so a host that accepts a connection and never answers would hang it forever), a bounded retry
with backoff for failures that may pass (refused or dropped connections, timeouts, 502/503/504), and
one line naming the host, what was being done and what to do when it still fails.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import io
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar, Union

from competition.errors import KaggleError
from competition.paths import REPO_ROOT, host_root
from competition.spec import CompetitionSpec

HOST_START_TIMEOUT_S = 20


@dataclass(frozen=True)
class Endpoint:
    """Where a competition is hosted and what it is called: all this module asks of a spec, and what
    `make init` has before any spec exists."""

    name: str
    kaggle_slug: str
    host: str  # kaggle | local


Competition = Union[CompetitionSpec, Endpoint]
TRANSIENT_HTTP_STATUS = (502, 503, 504)
T = TypeVar("T")


def _env_number(name: str, default: float) -> float:
    value = os.environ.get(name, "")
    try:
        return float(value) if value else default
    except ValueError:
        raise KaggleError(f"{name}={value!r}: must be a number") from None


def read_timeout_s() -> float:
    """Seconds a socket read may wait for the server ($KPIPE_KAGGLE_TIMEOUT_S, default 60)."""
    return _env_number("KPIPE_KAGGLE_TIMEOUT_S", 60.0)


def _install_default_timeout() -> None:
    """Give every request of this process a (connect, read) timeout unless the caller chose one.

    The kaggle client opens its own `requests` sessions in many places and passes no timeout; the
    transport adapter is the one place they all pass through. A read timeout bounds each wait for
    bytes, not a whole transfer, so a large download that keeps flowing is never cut."""
    from requests.adapters import HTTPAdapter

    if getattr(HTTPAdapter.send, "_kpipe_default_timeout", False):
        return
    unbounded_send = HTTPAdapter.send

    @functools.wraps(unbounded_send)
    def send(self, request, *args, **kwargs):
        if kwargs.get("timeout") is None:
            read = read_timeout_s()
            kwargs["timeout"] = (min(10.0, read), read)
        return unbounded_send(self, request, *args, **kwargs)

    send._kpipe_default_timeout = True
    HTTPAdapter.send = send


def host_description(spec: Competition) -> str:
    return f"the local Kaggle host (127.0.0.1:{local_host_port()})" if spec.host == "local" else "kaggle.com"


def is_transient(exc: Exception) -> bool:
    """Failures worth trying again: the request may not have arrived, or the server was briefly unable."""
    import requests

    if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
        return True
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return exc.response.status_code in TRANSIENT_HTTP_STATUS
    return False


def call(spec: Competition, what: str, action: Callable[[], T], retry: bool = True) -> T:
    """Run one client call: retried with backoff when it fails transiently (up to $KPIPE_KAGGLE_ATTEMPTS
    attempts, default 3, waits $KPIPE_KAGGLE_BACKOFF_S × 1, 2, 4 … seconds), else one KaggleError line.

    `retry=False` for calls that must not be repeated blindly (creating a submission: a timeout may
    mean it arrived); their callers reconcile with the server instead."""
    attempts = max(int(_env_number("KPIPE_KAGGLE_ATTEMPTS", 3)), 1) if retry else 1
    backoff = _env_number("KPIPE_KAGGLE_BACKOFF_S", 2.0)
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except KaggleError:
            raise
        except Exception as exc:  # the client raises requests errors, ValueError, TypeError and more
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise  # the client writing a download onto a full disk: the CLI reports that, not the host
            if attempt == attempts or not is_transient(exc):
                tried = f" (tried {attempts} times)" if attempts > 1 and is_transient(exc) else ""
                raise KaggleError(f"{what} failed{tried}: {describe_request_error(exc, spec)}") from None
            wait = backoff * 2 ** (attempt - 1)
            print(f"kaggle: {what}: {type(exc).__name__} from {host_description(spec)}; trying again in {wait:.0f} s "
                  f"(attempt {attempt + 1} of {attempts})", file=sys.stderr, flush=True)
            time.sleep(wait)
    raise AssertionError("unreachable")


def local_host_port() -> int:
    value = os.environ.get("KPIPE_LOCAL_HOST_PORT", "80")
    if not value.isdigit():
        raise KaggleError(f"KPIPE_LOCAL_HOST_PORT={value!r}: must be a port number, e.g. 80 or 8080")
    return int(value)


def port_open(port: int, address: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((address, port)) == 0


def ensure_local_host(port: int) -> None:
    """Start `python -m competition.host serve` in the background unless something already listens on `port`."""
    if port_open(port):
        return
    root = host_root()
    root.mkdir(parents=True, exist_ok=True)
    log_path = root / "server.log"
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "competition.host", "--root", str(root), "serve", "--port", str(port)],
            cwd=REPO_ROOT, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,  # outlives this command, like `make serve` would
        )
    deadline = time.monotonic() + HOST_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if port_open(port):
            print(f"started the local Kaggle host on port {port} (pid {process.pid}, log {log_path}; stop it with `make stop-host`)",
                  file=sys.stderr)
            return
        if process.poll() is not None:
            break
        time.sleep(0.2)
    tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
    raise KaggleError(
        f"could not start the local Kaggle host on port {port}: {tail[0]}; run `make serve` as root, "
        "or start it on another port and set KPIPE_LOCAL_HOST_PORT")


def _point_client_at_local_host(port: int) -> Path:
    os.environ["KAGGLE_API_ENVIRONMENT"] = "LOCALHOST"
    if port != 80:
        os.environ["HTTP_PROXY"] = os.environ["http_proxy"] = f"http://127.0.0.1:{port}"
        for name in ("NO_PROXY", "no_proxy"):
            os.environ.pop(name, None)
    return host_root() / "client"


def _import_kaggle_api():
    """Import late: kaggle reads KAGGLE_API_ENVIRONMENT and KAGGLE_CONFIG_DIR into class attributes at import.

    `import kaggle` also authenticates a module-level client against the default config and prints the
    CLI's login help when that finds nothing; that text is about the wrong config, so it is swallowed.
    """
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        from kaggle.api.kaggle_api_extended import KaggleApi
    return KaggleApi


def kaggle_api(spec: Competition, start_local_host: bool = True):
    """An authenticated KaggleApi for `spec.host`; every failure is a one-line KaggleError."""
    config_dir: Path | None = None
    if spec.host == "local":
        port = local_host_port()
        if start_local_host:
            ensure_local_host(port)
        config_dir = _point_client_at_local_host(port)
        if not (config_dir / "kaggle.json").is_file():
            raise KaggleError(f"{config_dir / 'kaggle.json'}: missing; the local host writes it on its first start (`make serve`)")
    else:
        default_config = Path(os.environ.get("KAGGLE_CONFIG_DIR") or Path.home() / ".kaggle") / "kaggle.json"
        has_env_creds = os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY")
        if not (default_config.is_file() or has_env_creds or os.environ.get("KAGGLE_API_TOKEN")):
            raise KaggleError(
                f"no Kaggle credentials: save your API token as {default_config} (chmod 600) or set KAGGLE_USERNAME and "
                f"KAGGLE_KEY; or set `host: local` in competition/{spec.name}.yaml to use the local host")

    KaggleApi = _import_kaggle_api()
    _install_default_timeout()

    api = KaggleApi()
    # The same settings on the instance, in case kaggle was imported before the environment was set.
    api.args = [a for a in api.args if a != "--local"] + (["--local"] if spec.host == "local" else [])
    if config_dir is not None:
        api.config_dir = str(config_dir)
        api.config = str(config_dir / "kaggle.json")
    try:
        # With an access token this asks the server (IntrospectToken): the same timeout and retries apply.
        call(spec, "checking the credentials", api.authenticate)
    except SystemExit:
        raise KaggleError("the kaggle client found no usable credentials; see README 'Using the real Kaggle'") from None
    return api


def describe_request_error(exc: Exception, spec: Competition) -> str:
    """One sentence for a failed Kaggle call: the server's message, or how to get connected."""
    import requests

    where = host_description(spec)
    if isinstance(exc, requests.Timeout):
        fix = ("restart it with `make stop-host` then `make serve`" if spec.host == "local"
               else "try again later, or raise KPIPE_KAGGLE_TIMEOUT_S")
        return f"{where} did not answer within {read_timeout_s():.0f} s; {fix}"
    if isinstance(exc, requests.ConnectionError):
        fix = "start it with `make serve`" if spec.host == "local" else "check your internet connection, or use `host: local`"
        return f"cannot reach {where}: {fix}"
    if isinstance(exc, requests.HTTPError):
        status = exc.response.status_code if exc.response is not None else "?"
        if status == 401:
            return f"{where} refused the credentials (HTTP 401); check kaggle.json"
        if status == 403 and spec.host == "kaggle":
            return f"kaggle.com refused access (HTTP 403): accept the rules of '{spec.kaggle_slug}' on its web page first"
        return f"{where} answered HTTP {status}: {_first_line(exc)}"
    return f"{where}: {type(exc).__name__}: {_first_line(exc)}"


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else "(no message)"


def kaggle_username(spec: Competition) -> str | None:
    """The account the kaggle client acts as for `spec.host` (the owner of what it publishes), read from
    the same config the client reads; None when there is none yet. Never reads or returns the key."""
    import json

    if spec.host == "local":
        config = host_root() / "client" / "kaggle.json"
    else:
        if os.environ.get("KAGGLE_USERNAME"):
            return os.environ["KAGGLE_USERNAME"]
        config = Path(os.environ.get("KAGGLE_CONFIG_DIR") or Path.home() / ".kaggle") / "kaggle.json"
    try:
        username = json.loads(config.read_text()).get("username")
    except (OSError, ValueError, AttributeError):
        return None
    return username if isinstance(username, str) and username else None
