"""``boxwatch-exporter gpu|containers|journald [flags]``: one exporter process per source."""

from __future__ import annotations

import argparse
import importlib
import sys

from boxwatch import __version__
from exporters.server import add_common_flags, run_exporter

# source name -> (module, default port, one-line description)
SOURCES = {
    "gpu": ("exporters.gpu", 9872, "NVIDIA GPUs through NVML (nvidia-ml-py)"),
    "containers": ("exporters.containers", 9873, "Docker containers through the Docker Engine API"),
    "journald": ("exporters.journald", 9874, "the systemd journal: severities, log templates, GPU Xid events"),
}


def build_parser(source: str | None = None) -> argparse.ArgumentParser:
    """The CLI parser. Only the module of ``source`` (the chosen subcommand) is imported, so one
    exporter never pays for another's imports, nor fails because another's library is missing."""
    parser = argparse.ArgumentParser(
        prog="boxwatch-exporter",
        description="Prometheus exporters of boxwatch. Run one process per source.",
    )
    parser.add_argument("--version", action="version", version=f"boxwatch-exporter {__version__}")
    sub = parser.add_subparsers(dest="source", metavar="SOURCE", required=True)
    for name, (module, port, description) in SOURCES.items():
        source_parser = sub.add_parser(
            name,
            help=f"export {description}",
            description=f"Export {description}. Serves Prometheus metrics on --web.listen-address.",
        )
        add_common_flags(source_parser, port)
        source_parser.set_defaults(_module=module)
        if name == source:
            _load(module).add_arguments(source_parser)
    return parser


def _load(module: str):
    return importlib.import_module(module)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(chosen if chosen in SOURCES else None).parse_args(argv)
    return run_exporter(args.source, args, _load(args._module).create)


if __name__ == "__main__":
    sys.exit(main())
