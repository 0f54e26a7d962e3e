"""Fit and score speed of each model on 14 days of one-minute data.

    python -m bench.model_speed [--days 14] [--series 200] [--models robust,seasonal,iforest]

Fit: seconds to fit one series (iforest: one entity of four series). Score: a serve cycle
scores the newest point of many series, so this times ``score`` + ``learn`` on one row per
series over ``--series`` fitted models and reports series per second.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from detector.models import make_model, model_class


def history(days: int, columns: int, seed: int = 0) -> pd.DataFrame:
    n = days * 1440
    idx = pd.date_range("2026-01-05", periods=n, freq="min", tz="UTC")
    rng = np.random.default_rng(seed)
    daily = np.sin(2 * np.pi * np.arange(n) / 1440)
    data = {f"f{c}": 50 + 10 * daily * (c + 1) + rng.normal(0, 1, n) for c in range(columns)}
    return pd.DataFrame(data if columns > 1 else {"value": data["f0"]}, index=idx)


def measure(name: str, days: int, series: int) -> tuple[float, float]:
    columns = 4 if model_class(name).multivariate else 1
    frame = history(days, columns)
    started = time.perf_counter()
    fits = 3
    for _ in range(fits):
        model = make_model(name).fit(frame.iloc[:-1])
    fit_seconds = (time.perf_counter() - started) / fits
    models = [model] * series  # scoring cost does not depend on which fitted series it is
    row = frame.iloc[-1:]
    started = time.perf_counter()
    for m in models:
        m.score(row)
        m.learn(row)
    return fit_seconds, series / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.model_speed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--series", type=int, default=200)
    parser.add_argument("--models", default="robust,seasonal,iforest")
    args = parser.parse_args(argv)
    print(f"{'model':<10} {'fit s/series':>14} {'scored series/s':>16}   ({args.days} days of 1-minute data)")
    for name in args.models.split(","):
        fit_seconds, rate = measure(name, args.days, args.series)
        print(f"{name:<10} {fit_seconds:>14.2f} {rate:>16.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
