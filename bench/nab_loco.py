"""Leave one category out for a model that publishes its own score: its parameters, chosen per fold.

    python -m bench.nab_loco [--data DIR] [--windows FILE] [--jobs N] [--json FILE]

``bench.nab``'s leave-one-category-out run re-chooses the calibration, which a ``calibrated``
model (``context``) does not use: what was chosen on the corpus is the model's parameters. Here
every candidate of :data:`GRID` is replayed through the model alone (``fit`` on the same
schedule and window as ``bench.nab``'s replay, then ``score_learn_many`` row by row, the score
published as is; no service, so it takes seconds per candidate), each category is scored with
the candidate that has the best shipped-rule standard score on the other four, and the five
held-out parts are scored together. The figures are an estimate of the drop: the headline
figures come from ``bench.nab``'s replay through the service.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.nab import (  # noqa: E402
    DEFAULT_NAB,
    FIRST_FIT_ROWS,
    FIT_EVERY,
    FIT_WINDOW,
    SHIPPED,
    category,
    data_files,
    evaluate,
    read_nab_file,
    rising_edges,
)
from detector.models import make_model, model_class  # noqa: E402
from detector.nabscore import STANDARD_PROFILES, score_corpus  # noqa: E402

GRID = {"levels": (5, 6, 7, 8), "threshold": (0.75, 0.9), "rest": (100, 150)}
"""The candidates the shipped ``context`` parameters were chosen from."""


def model_replay(task: tuple[str, dict, Path, str]) -> np.ndarray:
    """Published scores of one file: the model refitted on ``bench.nab``'s schedule, scored row by row."""
    name, params, data_dir, relative = task
    frame = read_nab_file(data_dir / relative)
    times, values = frame.index.asi8 / 1e9, frame["value"].to_numpy(dtype=float)
    kind, out = model_class(name), np.full(len(frame), np.nan)
    fit_every, window = pd.Timedelta(FIT_EVERY).total_seconds(), pd.Timedelta(FIT_WINDOW).total_seconds()
    model, fitted_at, fitted_rows = None, None, 0
    for i in range(len(frame)):
        if fitted_at is None and i >= FIRST_FIT_ROWS or fitted_at is not None and (
                times[i - 1] - fitted_at >= fit_every or i >= 2 * fitted_rows):
            start = np.searchsorted(times, times[i - 1] - window)
            refit = make_model(name, params).fit(frame.iloc[start:i])
            if model is not None:
                refit.carry_over(model)  # as the service installs a refit
            model, fitted_at, fitted_rows = refit, times[i - 1], i
        if model is not None:
            out[i] = kind.score_learn_many([model], times[i], values[i:i + 1])["score"][0]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.nab_loco", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_NAB / "data")
    parser.add_argument("--windows", type=Path, default=DEFAULT_NAB / "labels" / "combined_windows.json")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    windows = json.loads(args.windows.read_text())
    files = data_files(args.data, windows, None)
    stamps = {f: read_nab_file(args.data / f).index for f in files}
    candidates = [dict(zip(GRID, values, strict=True)) for values in itertools.product(*GRID.values())]
    scores: dict[str, dict[str, np.ndarray]] = {}
    with ProcessPoolExecutor(args.jobs) as pool:
        for params in candidates:
            tasks = [(SHIPPED["model"], {**SHIPPED["params"], **params}, args.data, f) for f in files]
            scores[json.dumps(params)] = dict(zip(files, pool.map(model_replay, tasks, chunksize=1), strict=True))
    standard = [p for p in STANDARD_PROFILES if p.name == "standard"]

    def rule_standard(key: str, subset: list[str]) -> float:
        result = score_corpus({f: (stamps[f], rising_edges(scores[key][f])) for f in subset},
                              {f: windows[f] for f in subset}, standard, threshold=1.0)
        return next(iter(result.values())).normalized

    chosen, held_out = {}, {}
    for held in sorted({category(f) for f in files}):
        rest = [f for f in files if category(f) != held]
        best = max(scores, key=lambda key, rest=rest: rule_standard(key, rest))
        chosen[held] = json.loads(best)
        held_out.update({f: scores[best][f] for f in files if category(f) == held})
    everything = max(scores, key=lambda key: rule_standard(key, files))
    report = {"chosen_per_fold": chosen, "chosen_on_all": json.loads(everything),
              "held_out": evaluate(held_out, stamps, windows, list(STANDARD_PROFILES)),
              "all_files": evaluate(scores[everything], stamps, windows, list(STANDARD_PROFILES))}
    for name in ("all_files", "held_out"):
        cells = "  ".join(f"{p}: swept {report[name]['swept'][p]['normalized']:.1f} "
                          f"rule {report[name]['shipped_rule'][p]['normalized']:.1f}" for p in report[name]["swept"])
        print(f"{name:<10} {cells}")
    print(f"chosen on all files: {report['chosen_on_all']}; per held-out category: {chosen}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
