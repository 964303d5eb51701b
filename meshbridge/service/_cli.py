"""The ``meshbridge`` command.

meshbridge check CONFIG      validate a config: every error, exit 1; exit 0 when clean
                             (--no-env: unset *_env variables are warnings, for CI)
meshbridge routes CONFIG     print the router table: name, kind, upstream, options
meshbridge serve CONFIG      serve the providers over HTTP (SIGHUP reloads;
                             --workers N: N processes on one port)
meshbridge reload CONFIG     make the running `serve` of CONFIG reload it
meshbridge limits CONFIG     each limit's use and what remains (--format table|json)
meshbridge demo              fake providers under a live workload, /metrics on --listen
meshbridge usage CONFIG      summaries (--group-by) and calls (--calls) from the usage ledger
meshbridge kinds             list the installed provider kinds
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from meshbridge import ConfigError
from meshbridge.providers import kinds

from ._config import Config, load_config, parse_listen
from ._demo import run_demo
from ._limits_cli import show_limits
from ._pidfile import PidFileError, pid_file_for, read_pid_file, running_serve, signal_serve
from ._service import Service, serve_until_signalled
from ._usage_cli import add_usage_parser, usage
from ._worker import WorkerSpec, run_worker
from ._workers import supervise

__all__ = ["main"]

log = logging.getLogger("meshbridge")


def _listen(value: str) -> tuple[str, int]:
    address = parse_listen(value)
    if address is None:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return address


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {value!r}")
    return seconds


def _count(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 64:
        raise argparse.ArgumentTypeError(
            f"expected a number of workers from 1 to 64, got {value!r}"
        )
    return int(value)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meshbridge",
        description="An in-process service mesh for aiohttp: LLM providers by name.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    check = commands.add_parser("check", help="validate a config file (exit 1 on errors)")
    check.add_argument("config", type=Path, metavar="CONFIG")
    routes = commands.add_parser("routes", help="print the router table of a config file")
    routes.add_argument("config", type=Path, metavar="CONFIG")
    for command in (check, routes):
        command.add_argument(
            "--no-env",
            action="store_true",
            help="check without the secrets: unset *_env variables are warnings, not errors",
        )
    serve = commands.add_parser("serve", help="serve the providers of a config over HTTP")
    serve.add_argument("config", type=Path, metavar="CONFIG")
    serve.add_argument(
        "--listen", type=_listen, metavar="HOST:PORT", help="overrides server.listen"
    )
    serve.add_argument(
        "--workers",
        type=_count,
        metavar="N",
        help="run N worker processes on the one port, under a supervisor that restarts them",
    )
    serve.add_argument("--worker", type=WorkerSpec.parse, help=argparse.SUPPRESS)
    reload = commands.add_parser("reload", help="make a running `serve` reload its config")
    reload.add_argument("config", type=Path, metavar="CONFIG", nargs="?")
    reload.add_argument(
        "--pid",
        type=int,
        help="signal this pid, once /proc shows it is `meshbridge serve` (of CONFIG, if given)",
    )
    limits = commands.add_parser(
        "limits", help="each limit's current use and remaining budget (a shared store)"
    )
    limits.add_argument("config", type=Path, metavar="CONFIG")
    limits.add_argument("--format", choices=("table", "json"), default="table")
    demo = commands.add_parser("demo", help="fake providers under a live workload")
    demo.add_argument(
        "--config", type=Path, metavar="FILE", help="a config instead of the built-in one"
    )
    demo.add_argument(
        "--listen",
        type=_listen,
        default=("127.0.0.1", 8080),
        metavar="HOST:PORT",
        help="where /metrics and the gated routes are served (default 127.0.0.1:8080)",
    )
    demo.add_argument(
        "--duration",
        type=_seconds,
        metavar="SECONDS",
        help="stop after this long (default: Ctrl-C)",
    )
    demo.add_argument(
        "--admin-listen",
        type=_listen,
        metavar="HOST:PORT",
        help="serve the admin page (and /metrics, /readyz) there, port 0 for a free one; "
        "with the built-in config",
    )
    demo.add_argument("--access-log", action="store_true", help="log every outside request")
    add_usage_parser(commands)
    commands.add_parser("kinds", help="list the installed provider kinds")
    return parser


def _errors(exc: ConfigError) -> int:
    for line in exc.lines():
        print(line)
    count = len(exc.errors)
    print(f"{count} error{'s' if count != 1 else ''}")
    return 1


def _unset(loaded: Config, out: TextIO) -> None:
    for key, variable in loaded.missing_env:
        print(
            f"{loaded.path}: {key}: warning: environment variable {variable} is not set", file=out
        )


def check(config: Path, *, no_env: bool = False) -> int:
    try:
        loaded = load_config(config, require_env=not no_env)
    except ConfigError as exc:
        return _errors(exc)
    _unset(loaded, sys.stdout)
    unset = len(loaded.missing_env)
    note = f" ({unset} variable{'s' if unset != 1 else ''} not set)" if unset else ""
    print(f"{config}: ok{note}, {len(loaded.providers)} providers: {', '.join(loaded.providers)}")
    return 0


def routes(config: Path, *, no_env: bool = False) -> int:
    try:
        loaded = load_config(config, require_env=not no_env)
    except ConfigError as exc:
        return _errors(exc)
    _unset(loaded, sys.stderr)
    rows = [("NAME", "KIND", "UPSTREAM", "OPTIONS")]
    for name, provider in loaded.providers.items():
        shown = dict(provider.describe())
        upstream = shown.pop("upstream", "")
        if provider.require_api_key_id:
            shown["require_api_key_id"] = "true"
        options = " ".join(f"{k}={v}" for k, v in shown.items())
        rows.append((name, provider.kind, upstream, options))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print(
            "  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[3]]).rstrip()
        )
    return 0


def list_kinds() -> int:
    for name, kind in kinds().items():
        print(f"{name:<12} {kind.summary}")
    return 0


async def _serve(
    config: Path, listen: tuple[str, int] | None, worker: WorkerSpec | None = None
) -> int:
    if worker is not None and listen is not None:
        return await run_worker(config, *listen, worker)  # the supervisor's generation
    try:
        loaded = load_config(config)
    except ConfigError as exc:
        return _errors(exc)
    other = running_serve(pid_file_for(loaded), loaded.path)
    if other is not None:
        log.error("`meshbridge serve %s` already runs (pid %d, pid file %s): not starting "
                  "another", config, other, pid_file_for(loaded))  # fmt: skip
        return 1
    host, port = listen if listen else (None, None)
    tried = _address(*listen) if listen else loaded.server.listen  # what the error is about
    try:
        service = Service(loaded, host=host, port=port)
        await service.start()
    except OSError as exc:
        log.error("cannot listen on %s: %s", tried, exc)
        return 1
    try:
        if not loaded.server.clients:
            log.warning("no [server.clients]: every /<provider>/ request will get 401")
        await serve_until_signalled(service)
    finally:
        await service.aclose()
    log.info("stopped")
    return 0


def reload(config: Path | None, pid: int | None) -> int:
    """SIGHUP to the ``meshbridge serve`` of ``config`` (found by its pid file,
    or the given pid); nothing is signalled unless /proc shows that process
    runs ``meshbridge serve`` of that config."""
    if pid is None and config is None:
        print("meshbridge reload: give CONFIG (the file `serve` runs) or --pid")
        return 2
    if config is not None:
        try:
            loaded = load_config(config)
        except ConfigError as exc:
            print("not reloading: the server would reject this config")
            return _errors(exc)
        if pid is None:
            pid_file = pid_file_for(loaded)
            try:
                pid = read_pid_file(pid_file)
            except PidFileError as exc:
                print(f"no running `meshbridge serve {config}` found: {exc}")
                return 1
    assert pid is not None
    try:
        signal_serve(pid, config)
    except PidFileError as exc:
        print(f"not reloading: {exc}")
        return 1
    print(f"sent SIGHUP to pid {pid}: the server logs the result and counts it")
    print("in meshbridge_config_reloads_total{result}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``meshbridge`` command; returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)  # the ledger logs its own upgrades
    if args.command == "check":
        return check(args.config, no_env=args.no_env)
    if args.command == "routes":
        return routes(args.config, no_env=args.no_env)
    if args.command == "serve":
        if args.workers is not None and args.worker is None:
            return asyncio.run(supervise(args.config, args.listen, args.workers))
        return asyncio.run(_serve(args.config, args.listen, args.worker))
    if args.command == "reload":
        return reload(args.config, args.pid)
    if args.command == "kinds":
        return list_kinds()
    if args.command == "limits":
        return show_limits(args.config, args.format)
    if args.command == "usage":
        return usage(args)

    if not args.access_log:
        logging.getLogger("meshbridge.access").setLevel(logging.WARNING)
    host, port = args.listen
    try:
        admin = _address(*args.admin_listen) if args.admin_listen else None
        return asyncio.run(run_demo(args.config, host, port, args.duration, admin=admin))
    except ConfigError as exc:
        return _errors(exc)
    except OSError as exc:
        print(f"meshbridge demo: cannot listen on {host}:{port}: {exc}")
        return 1
