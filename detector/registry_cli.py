"""``boxwatch-detector train|models|promote|rollback``: the registry's verbs (mlflow loads only when run)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from boxwatch.log import kv, setup_logging
from detector.cli_common import Command, add_config_flags, load_or_report, unknown_queries


def _registry_or_report(args: argparse.Namespace):
    config = load_or_report(args)
    if config is None:
        return None, None
    from detector.registry import Registry

    return config, Registry(config, args.shard)


def _print_error(verb: str, err: BaseException) -> int:
    print(f"{verb}: model registry error: {type(err).__name__}: {err}", file=sys.stderr)
    return 1


def _on_registry(verb: str, args: argparse.Namespace, action: Callable[[Any], int]) -> int:
    """Exit status of ``action(registry)``; 1 when the configuration is invalid or the registry fails."""
    config, registry = _registry_or_report(args)
    if config is None:
        return 1
    from detector.registry import registry_errors

    try:
        return action(registry)
    except registry_errors() as err:
        return _print_error(verb, err)


# --------------------------------------------------------------------------- train


def _train_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_flags(parser)
    parser.add_argument("--query", dest="queries", action="append",
                        help="only this query alias (repeatable; default: every query)")
    parser.add_argument("--json", action="store_true", help="print the decisions as JSON")


def _train(args: argparse.Namespace) -> int:
    import logging

    setup_logging(args.log_level, args.log_format)
    log = logging.getLogger("boxwatch.detector")
    config, registry = _registry_or_report(args)
    if config is None:
        return 1
    if unknown_queries("train", config, args.queries):
        return 2
    from detector.registry import RegistryHealth, RegistrySink, registry_errors
    from detector.service import Detector
    from detector.store import LocalStore

    try:
        registry.ping()
    except registry_errors() as err:
        return _print_error("train", err)
    store = LocalStore(config.state_dir, config.model_key_file)
    sink = RegistrySink(registry, store, RegistryHealth())
    detector = Detector(config, shard=args.shard, fit_sink=sink, load_bundle=store.load)
    decisions, failed = [], []
    for alias in args.queries or list(config.queries):
        result = detector.fit(alias)
        try:
            decision = None if result is None else sink.register(result)[0]
        except Exception:  # reported as this query's failure; the other queries still train
            log.exception("registering the fit failed", extra=kv(query=alias))
            decision = None
        if decision is None:
            failed.append(alias)
            log.error("training failed", extra=kv(query=alias))
        else:
            decisions.append(decision.as_dict())
    detector.stop(timeout=1)
    if args.json:
        print(json.dumps({"decisions": decisions, "failed": failed}, indent=1))
    else:
        for d in decisions:
            state = "champion" if d["promoted"] else "challenger"
            print(f"{d['name']} v{d['version']}: {state} — {d['reason']}")
        for alias in failed:
            print(f"{alias}: not trained (see the log)")
    return 1 if failed else 0


# --------------------------------------------------------------------------- models


def _models_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_flags(parser)
    parser.add_argument("name", nargs="?", help="one registered model (default: every boxwatch.* model)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _models(args: argparse.Namespace) -> int:
    def show(registry) -> int:
        rows = registry.versions([args.name] if args.name else None)
        print(json.dumps(rows, indent=1) if args.json else format_table(rows))
        return 0

    return _on_registry("models", args, show)


def format_table(rows: list[dict]) -> str:
    header = ["NAME", "VERSION", "ALIASES", "DECISION", "CREATED", "REASON"]
    table = [header] + [[
        r["name"], r["version"], ",".join(r["aliases"]) or "-", r["decision"] + (" (manual)" if r["manual"] else ""),
        datetime.fromtimestamp(r["created"], UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), r["reason"],
    ] for r in rows]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header) - 1)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(row[:-1], widths, strict=True)) + "  " + str(row[-1])
                     for row in table)


# --------------------------------------------------------------------------- promote / rollback


def _promote_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_flags(parser)
    parser.add_argument("name", help="registered model, e.g. boxwatch.gpu_temp.seasonal")
    parser.add_argument("version", help="version to serve")


def _promote(args: argparse.Namespace) -> int:
    def promote(registry) -> int:
        known = {r["version"] for r in registry.versions([args.name])}
        if str(args.version) not in known:
            print(f"promote: {args.name} has no version {args.version} (versions: "
                  f"{', '.join(sorted(known, key=int)) or 'none'})", file=sys.stderr)
            return 2
        previous = registry.set_champion(args.name, str(args.version), manual=True, reason="promoted by hand")
        print(f"{args.name}: champion is now v{args.version}" + (f" (was v{previous})" if previous else ""))
        return 0

    return _on_registry("promote", args, promote)


def _rollback_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_flags(parser)
    parser.add_argument("name", help="registered model, e.g. boxwatch.gpu_temp.seasonal")


def _rollback(args: argparse.Namespace) -> int:
    def rollback(registry) -> int:
        try:
            old, new = registry.rollback(args.name)
        except ValueError as err:
            print(f"rollback: {err}", file=sys.stderr)
            return 2
        print(f"{args.name}: champion rolled back from v{old} to v{new}")
        return 0

    return _on_registry("rollback", args, rollback)


# The registry's verbs; detector.cli lists them among its subcommands.
COMMANDS: dict[str, Command] = {
    "train": Command(
        "fit every configured query now, log the runs to MLflow and gate promotion",
        _train_arguments, _train,
        "Fit each query on its fit_window, log an MLflow run and a model version per query and model, validate it "
        "on the held-out end of the window and make it champion if it is no worse than the current one.",
    ),
    "models": Command(
        "list registered model versions, their aliases and the promotion reasons",
        _models_arguments, _models,
    ),
    "promote": Command(
        "make VERSION the champion of NAME by hand", _promote_arguments, _promote,
        "Point the alias champion at VERSION (the former champion becomes previous_champion). A champion chosen by hand "
        "is not replaced by automatic refits while registry.promotion.respect_manual is true.",
    ),
    "rollback": Command(
        "put the previous champion of NAME back", _rollback_arguments, _rollback,
    ),
}
