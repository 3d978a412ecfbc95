"""`python -m competition.host serve|add|add-user|build|close|where|stop` — run and manage the local Kaggle-compatible host."""
from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

from competition import atomic, disk
from competition.cli import OneLineParser, whole_number
from competition.host import builders
from competition.host.server import make_server
from competition.host.store import HostStore, InvalidName, NotFound, check_slug
from competition.paths import host_root


def running_host_pid(pid_file: Path) -> int | None:
    """The PID in `pid_file` if that process is a local host serving; None (and the stale file removed) if not.

    A PID file can outlive its process and the number be reused by anything else; signalling it blindly
    could stop an unrelated program."""
    try:
        pid = int(pid_file.read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError, IndexError):
        pid_file.unlink(missing_ok=True)
        return None
    if b"competition.host" in cmdline and b"serve" in cmdline:
        return pid
    pid_file.unlink(missing_ok=True)
    return None


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m competition.host", description=__doc__)
    parser.add_argument("--root", type=Path, default=None, help="host state folder (default: $KPIPE_HOST_ROOT or ~/.local/share/kpipe-host)")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the Kaggle API on loopback")
    serve.add_argument("--port", type=whole_number("PORT", 0, 65535, example=8080), default=80, help="port (80 is what KAGGLE_API_ENVIRONMENT=LOCALHOST uses)")
    serve.add_argument("--bind", default="127.0.0.1", help="loopback address to listen on")
    add = sub.add_parser("add", help="host a competition of your own from a folder (competition.json, data/, solution.csv)")
    add.add_argument("folder", type=Path)
    build = sub.add_parser("build", help="build built-in competitions now instead of on first use")
    build.add_argument("slugs", nargs="*", default=sorted(builders.BUILDERS))
    add_user = sub.add_parser("add-user", help="another account (a classmate, a teammate) with its own kaggle.json")
    add_user.add_argument("username")
    add_user.add_argument("--team", default=None, help="the team it submits for (default: its own); teammates share "
                                                       "submissions, the daily limit and a leaderboard row")
    close = sub.add_parser("close", help="end a competition now: its private scores become visible, as after "
                                         "kaggle.com's deadline")
    close.add_argument("slug")
    sub.add_parser("where", help="print where the host keeps its state and client credentials")
    sub.add_parser("stop", help="stop the host serving from this state folder")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or the one line of a bad command line
        return exc.code

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    disk.keep_writes_failing_instead_of_dying()
    store = HostStore(args.root or host_root())
    try:
        if args.command == "serve":
            server = make_server(store, args.port, args.bind)
            print(f"local Kaggle host: http://{args.bind}:{args.port}  state: {store.root}  "
                  f"client config: {store.root / 'client' / 'kaggle.json'}", flush=True)
            pid_file = store.root / "server.pid"
            atomic.write_text(pid_file, f"{os.getpid()} {args.port}\n")
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # so the finally below runs
            try:
                server.serve_forever()
            except KeyboardInterrupt:
                pass
            finally:
                pid_file.unlink(missing_ok=True)
        elif args.command == "add":
            slug = store.add_competition(args.folder)
            print(f"hosting '{slug}' from {args.folder}")
        elif args.command == "build":
            for slug in args.slugs:
                if check_slug(slug) not in builders.BUILDERS:
                    raise ValueError(f"'{slug}' is not a built-in competition ({', '.join(sorted(builders.BUILDERS))})")
                print(f"{slug}: {store.competition_dir(slug)}", flush=True)
        elif args.command == "add-user":
            path = store.add_user(args.username, args.team)
            print(f"user '{args.username}' (team '{store.team_of(args.username)}'): credentials in {path}; use them with "
                  f"KAGGLE_CONFIG_DIR={path.parent}")
        elif args.command == "close":
            deadline = store.close(check_slug(args.slug))
            print(f"{args.slug}: closed (deadline {deadline}); private scores are now visible")
        elif args.command == "stop":
            pid = running_host_pid(store.root / "server.pid")
            if pid is None:
                print(f"no host is running from {store.root}")
            else:
                try:
                    os.kill(pid, signal.SIGTERM)
                    print(f"stopped the local host (pid {pid})")
                except ProcessLookupError:
                    print(f"the local host (pid {pid}) was not running")
                (store.root / "server.pid").unlink(missing_ok=True)
        elif args.command == "where":
            store.credentials()
            print(f"state: {store.root}\nclient config: {store.root / 'client' / 'kaggle.json'}")
    except PermissionError as exc:
        print(f"error: {exc}; port {getattr(args, 'port', '')} below 1024 needs root or CAP_NET_BIND_SERVICE "
              "(or use --port 8080 and see README 'Local host on another port')", file=sys.stderr)
        return 2
    except (ValueError, InvalidName, OSError, builders.BuildError, NotFound) as exc:
        code = disk.refusal(exc, store.root)
        print(f"error: {disk.describe(code, getattr(exc, 'filename', None) or store.root) if code else exc}",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
