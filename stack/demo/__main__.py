"""``python -m stack.demo``: generate the history, serve the live continuation, print the incident's times."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

from boxwatch.log import setup_logging
from boxwatch.web import add_web_flags, web_config_from_flags
from stack.demo.metrics import serve_until, write_openmetrics
from stack.demo.scenario import DEFAULT_SEED, DEFAULT_STEP, Scenario

DESCRIPTION = "Seeded demo scenario: a week of a GPU workstation's metrics, ending in an incident."


def _parse_end(value: str) -> float:
    if value == "now":
        return time.time()
    try:
        return float(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--end {value!r}: expected 'now' or unix seconds") from err


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stack.demo", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--end", type=_parse_end, default="now", help="scenario end: 'now' or unix seconds")
    common.add_argument("--days", type=float, default=7.0, help="length of the history (default 7)")
    common.add_argument("--step", type=float, default=DEFAULT_STEP, help="seconds between samples (default 60)")
    common.add_argument("--seed", type=int, default=DEFAULT_SEED)
    gen = sub.add_parser("generate", parents=[common], help="write the history as OpenMetrics")
    gen.add_argument("--out", type=Path, required=True)
    gen.add_argument("--runtime", action="store_true",
                     help="also synthesize up{} and detector metrics (for dashboards without a detector)")
    srv = sub.add_parser("serve", parents=[common], help="serve the scenario live on /metrics")
    add_web_flags(srv, "127.0.0.1:9877", listen_aliases=["--listen"])
    sub.add_parser("incident", parents=[common], help="print the incident's times as JSON")
    # `python -m stack.demo --out FILE` is short for `generate --out FILE`
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0].startswith("-") and args_list[0] not in ("-h", "--help"):
        args_list.insert(0, "generate")
    args = parser.parse_args(args_list)
    if args.command is None:
        parser.print_help()
        return 2
    scenario = Scenario(args.end, days=args.days, step=args.step, seed=args.seed,
                        runtime=getattr(args, "runtime", False))
    if args.command == "incident":
        print(json.dumps({"scenario_start": scenario.start, "scenario_end": scenario.end,
                          **asdict(scenario.incident)}, indent=2))
    elif args.command == "generate":
        with open(args.out, "w", encoding="utf-8") as out:
            count = write_openmetrics(scenario, out)
        print(json.dumps({"event": "demo_generated", "path": str(args.out), "samples": count,
                          "start": scenario.start, "end": scenario.end, "note": "DEMO DATA"}), file=sys.stderr)
    else:
        setup_logging()
        web_config = web_config_from_flags(args)
        if web_config is None:
            return 2
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        print(json.dumps({"event": "demo_serving", "listen": args.listen_address, "note": "DEMO DATA"}),
              file=sys.stderr)
        serve_until(scenario, args.listen_address, stop, web_config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
