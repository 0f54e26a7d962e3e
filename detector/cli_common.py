"""What every ``boxwatch-detector`` subcommand shares: the :class:`Command` entry, the config flags
(--config, --set, --prometheus.url, --shard, --log.*) and loading the configuration with every problem
reported. :mod:`detector.cli` and :mod:`detector.registry_cli` both build on it; neither imports the other
back.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass

from boxwatch.log import add_log_flags
from detector.config import ConfigError, DetectorConfig, load_config

DEFAULT_CONFIG = "boxwatch-detector.yml"


@dataclass
class Command:
    """One subcommand (``boxwatch-detector NAME``): help, how to add its flags, how to run it."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: str = ""


# --------------------------------------------------------------------------- shared flags


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """--config, --set, --prometheus.url, --shard and logging flags, shared by every subcommand."""
    parser.add_argument("--config", default=os.environ.get("BOXWATCH_CONFIG", DEFAULT_CONFIG),
                        help="YAML configuration file (default: $BOXWATCH_CONFIG or %(default)s)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a configuration key, e.g. --set reader.timeout=10s (repeatable)")
    parser.add_argument("--prometheus.url", dest="prometheus_url",
                        help="Prometheus HTTP API URL (overrides reader.url)")
    parser.add_argument("--shard", default="0/1", type=parse_shard, metavar="I/N",
                        help="score only the series whose label hash mod N is I (default: %(default)s)")
    add_log_flags(parser)


def parse_shard(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)/(\d+)", text)
    if not match or int(match.group(2)) < 1 or int(match.group(1)) >= int(match.group(2)):
        raise argparse.ArgumentTypeError(f"expected I/N with 0 <= I < N, got {text!r}")
    return int(match.group(1)), int(match.group(2))


def overrides_from(args: argparse.Namespace) -> dict[str, str]:
    """Key-path overrides from --set and the dedicated flags (flags win over the file and env)."""
    overrides: dict[str, str] = {}
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set: expected KEY=VALUE, got {item!r}")
        overrides[key.strip()] = value
    if getattr(args, "prometheus_url", None):
        overrides["reader.url"] = args.prometheus_url
    if getattr(args, "listen_address", None):
        overrides["server.listen_address"] = args.listen_address
    if getattr(args, "web_config_file", None):
        overrides["server.web_config_file"] = args.web_config_file
    return overrides


def load_or_report(args: argparse.Namespace) -> DetectorConfig | None:
    """The configuration, or ``None`` after printing every problem to stderr."""
    try:
        return load_config(args.config, overrides_from(args))
    except ConfigError as err:
        print(f"{args.config}: invalid configuration ({len(err.problems)} problem(s)):", file=sys.stderr)
        for problem in err.problems:
            print(f"  {problem}", file=sys.stderr)
        return None


def unknown_queries(verb: str, config: DetectorConfig, wanted: list[str] | None) -> bool:
    """True, after saying which on stderr, when ``wanted`` (--query) names an alias ``config`` lacks."""
    unknown = sorted(set(wanted or []) - set(config.queries))
    if unknown:
        print(f"{verb}: unknown query alias(es): {', '.join(unknown)}", file=sys.stderr)
    return bool(unknown)
