"""The ``meshbridge`` command.

meshbridge check CONFIG      validate a config: every error, exit 1; exit 0 when clean
meshbridge routes CONFIG     print the router table: name, kind, upstream, options
meshbridge serve CONFIG      serve the providers over HTTP (SIGHUP reloads)
meshbridge reload CONFIG     make the running `serve` of CONFIG reload it
meshbridge demo              fake providers under a live workload, /metrics on --listen
meshbridge kinds             list the installed provider kinds
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from meshbridge import ConfigError
from meshbridge.providers import kinds

from ._config import load_config, parse_listen
from ._demo import run_demo
from ._service import Service, pid_file_for, serve_until_signalled

__all__ = ["main"]

log = logging.getLogger("meshbridge")


def _listen(value: str) -> tuple[str, int]:
    address = parse_listen(value)
    if address is None:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return address


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {value!r}")
    return seconds


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
    serve = commands.add_parser("serve", help="serve the providers of a config over HTTP")
    serve.add_argument("config", type=Path, metavar="CONFIG")
    serve.add_argument(
        "--listen", type=_listen, metavar="HOST:PORT", help="overrides server.listen"
    )
    reload = commands.add_parser("reload", help="make a running `serve` reload its config")
    reload.add_argument("config", type=Path, metavar="CONFIG", nargs="?")
    reload.add_argument("--pid", type=int, help="signal this pid (the config is not checked)")
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
    demo.add_argument("--access-log", action="store_true", help="log every outside request")
    commands.add_parser("kinds", help="list the installed provider kinds")
    return parser


def _errors(exc: ConfigError) -> int:
    for line in exc.lines():
        print(line)
    count = len(exc.errors)
    print(f"{count} error{'s' if count != 1 else ''}")
    return 1


def check(config: Path) -> int:
    try:
        loaded = load_config(config)
    except ConfigError as exc:
        return _errors(exc)
    print(f"{config}: ok, {len(loaded.providers)} providers: {', '.join(loaded.providers)}")
    return 0


def routes(config: Path) -> int:
    try:
        loaded = load_config(config)
    except ConfigError as exc:
        return _errors(exc)
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


async def _serve(config: Path, listen: tuple[str, int] | None) -> int:
    try:
        loaded = load_config(config)
    except ConfigError as exc:
        return _errors(exc)
    host, port = listen if listen else (None, None)
    try:
        service = Service(loaded, host=host, port=port)
        await service.start()
    except OSError as exc:
        log.error("cannot listen on %s: %s", loaded.server.listen, exc)
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
    if pid is None:
        if config is None:
            print("meshbridge reload: give CONFIG (the file `serve` runs) or --pid")
            return 2
        try:
            loaded = load_config(config)
        except ConfigError as exc:
            print("not reloading: the server would reject this config (or use --pid)")
            return _errors(exc)
        pid_file = pid_file_for(loaded)
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError) as exc:
            print(f"no running `meshbridge serve {config}` found ({pid_file}: {exc})")
            return 1
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as exc:
        print(f"cannot signal pid {pid}: {exc}")
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
    if args.command == "check":
        return check(args.config)
    if args.command == "routes":
        return routes(args.config)
    if args.command == "serve":
        return asyncio.run(_serve(args.config, args.listen))
    if args.command == "reload":
        return reload(args.config, args.pid)
    if args.command == "kinds":
        return list_kinds()

    if not args.access_log:
        logging.getLogger("meshbridge.access").setLevel(logging.WARNING)
    host, port = args.listen
    try:
        return asyncio.run(run_demo(args.config, host, port, args.duration))
    except ConfigError as exc:
        return _errors(exc)
    except OSError as exc:
        print(f"meshbridge demo: cannot listen on {host}:{port}: {exc}")
        return 1
