"""``boxwatch-stack up|status|down|webhook``: the whole stack on localhost, without Docker."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

import requests

from boxwatch import __version__
from boxwatch.log import add_log_flags, kv, setup_logging
from boxwatch.web import add_web_flags, parse_listen_address, web_config_from_flags
from stack.runtime import (
    COMPONENTS,
    DEFAULT_PORTS,
    DEMO_COMPONENTS,
    Layout,
    StackError,
    build_children,
    default_config_dir,
    prepare_demo,
)
from stack.supervisor import Supervisor, pid_alive, read_state

log = logging.getLogger("boxwatch.stack")

DEFAULT_STATE_DIR = Path(os.environ.get("BOXWATCH_STATE_DIR", ".boxwatch"))


def _ports(values: list[str]) -> dict[str, int]:
    ports = dict(DEFAULT_PORTS)
    for value in values:
        name, sep, port = value.partition("=")
        if not sep or name not in DEFAULT_PORTS or not port.isdigit():
            raise argparse.ArgumentTypeError(
                f"--port {value!r}: expected NAME=PORT with NAME one of {', '.join(DEFAULT_PORTS)}"
            )
        ports[name] = int(port)
    return ports


def _components(only: list[str] | None, without: list[str], available: list[str]) -> list[str]:
    chosen = only or available
    for name in [*chosen, *without]:
        if name not in available:
            raise StackError(f"component {name!r} is not part of this stack; it has: {', '.join(available)}")
    return [c for c in available if c in chosen and c not in without]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="boxwatch-stack",
        description="Run boxwatch natively: Prometheus, Alertmanager, a webhook sink, the exporters and "
        "the detector, on localhost, supervised.",
    )
    parser.add_argument("--version", action="version", version=f"boxwatch-stack {__version__}")
    parser.add_argument(
        "--state-dir", type=Path, default=DEFAULT_STATE_DIR,
        help="where generated configs, data, logs and the stack's state live "
        "(default: $BOXWATCH_STATE_DIR or .boxwatch)",
    )
    add_log_flags(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    up = sub.add_parser("up", help="start the stack in the foreground; Ctrl-C stops everything")
    up.add_argument("--config-dir", type=Path, default=None,
                    help="project checkout holding prometheus/, alertmanager/ and detector/ configs "
                    "(default: the checkout boxwatch runs from)")
    up.add_argument("--host", default="127.0.0.1", help="address every component listens on (default: %(default)s)")
    up.add_argument("--port", action="append", default=[], metavar="NAME=PORT",
                    help="override a port, e.g. --port prometheus=19090 (defaults: "
                    + ", ".join(f"{k}={v}" for k, v in DEFAULT_PORTS.items()) + ")")
    up.add_argument("--only", action="append", metavar="NAME", choices=COMPONENTS + ["demo"],
                    help="start only these components (repeatable)")
    up.add_argument("--without", action="append", default=[], metavar="NAME", choices=COMPONENTS + ["demo"],
                    help="do not start this component (repeatable)")
    up.add_argument("--demo", action="store_true",
                    help="run on a seeded week of DEMO data ending in an incident (GPU overheating, an Xid 79, "
                    "a crash-looping container) instead of this machine's exporters; the anomaly score "
                    "crosses 1 and alerts reach the webhook within a few minutes")
    up.add_argument("--detector-config", type=Path, default=None,
                    help="detector config file (default: detector/boxwatch-detector.example.yml); "
                    "the stack points it at its own Prometheus, listen address and state directory")

    sub.add_parser("status", help="show the running stack's children, health and URLs")
    down = sub.add_parser("down", help="stop a stack started with `up` from another shell")
    down.add_argument("--timeout", type=float, default=30.0, help="seconds to wait (default: %(default)s)")

    webhook = sub.add_parser("webhook", help="run only the webhook sink that logs Alertmanager notifications")
    add_web_flags(webhook, "127.0.0.1:9876", listen_aliases=["--listen"])
    return parser


# --------------------------------------------------------------------------- commands


def cmd_up(args: argparse.Namespace) -> int:
    state_dir = args.state_dir.resolve()
    if (state := read_state(state_dir)) is not None:
        log.error("a stack already runs for this state directory",
                  extra=kv(state_dir=state_dir, supervisor_pid=state["supervisor_pid"]))
        return 1
    layout = Layout(config_dir=(args.config_dir or default_config_dir()).resolve(), state_dir=state_dir,
                    host=args.host)
    try:
        ports = _ports(args.port)
        enabled = _components(args.only, args.without, DEMO_COMPONENTS if args.demo else COMPONENTS)
        if args.demo:
            log.info("generating a week of DEMO data and loading it into Prometheus (about a minute)")
            layout.demo_end = prepare_demo(layout)
        children = build_children(layout, ports, enabled, args.detector_config)
    except (StackError, argparse.ArgumentTypeError) as err:
        log.error(str(err))
        return 2
    supervisor = Supervisor(children, state_dir, state_dir / "logs")

    def _stop(signum, _frame):
        log.info("stopping the stack", extra=kv(signal=signal.Signals(signum).name))
        supervisor.request_stop()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    threading.Thread(target=_announce, args=(supervisor,), daemon=True).start()
    supervisor.run()
    log.info("stack stopped")
    return 0


def _announce(supervisor: Supervisor) -> None:
    """Print the URLs once every child has had a chance to become healthy."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not all(c.healthy for c in supervisor.children):
        time.sleep(0.5)
    lines = ["", "boxwatch stack:"]
    for child in supervisor.children:
        health = "healthy" if child.healthy else "NOT HEALTHY (see logs)"
        lines.append(f"  {child.name:<13} {child.url:<28} {health}")
    lines += [f"  logs: {supervisor.log_dir}", "  stop: Ctrl-C, or `boxwatch-stack down` from another shell", ""]
    print("\n".join(lines), flush=True)


def cmd_status(args: argparse.Namespace) -> int:
    state = read_state(args.state_dir.resolve())
    if state is None:
        print(f"no stack is running for {args.state_dir}")
        return 3
    print(f"supervisor pid {state['supervisor_pid']}, state dir {args.state_dir.resolve()}")
    print(f"{'NAME':<13} {'PID':>7} {'STATE':<8} {'HEALTH':<9} {'RESTARTS':>8}  URL")
    all_healthy = True
    for name, child in state["children"].items():
        healthy = _probe(child["health_url"]) if child["pid"] else False
        all_healthy &= healthy
        print(f"{name:<13} {child['pid'] or '-':>7} {child['state']:<8} "
              f"{'healthy' if healthy else 'unhealthy':<9} {child['restarts']:>8}  {child['url']}")
    return 0 if all_healthy else 1


def _probe(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def cmd_down(args: argparse.Namespace) -> int:
    state = read_state(args.state_dir.resolve())
    if state is None:
        print(f"no stack is running for {args.state_dir}")
        return 0
    pid = state["supervisor_pid"]
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + args.timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if pid_alive(pid):
        print(f"the supervisor (pid {pid}) did not stop within {args.timeout}s", file=sys.stderr)
        return 1
    print("stack stopped")
    return 0


def cmd_webhook(args: argparse.Namespace) -> int:
    from stack.webhook import WebhookSink

    web_config = web_config_from_flags(args)
    if web_config is None:
        return 2
    host, port = parse_listen_address(args.listen_address)
    sink = WebhookSink(host, port, web_config=web_config).start()
    log.info("webhook sink listening", extra=kv(url=sink.url))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    sink.stop()
    return 0


COMMANDS = {"up": cmd_up, "status": cmd_status, "down": cmd_down, "webhook": cmd_webhook}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    return COMMANDS[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
