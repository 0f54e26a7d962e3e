"""Replay NAB files through the detector service and score what it publishes with NAB's rules.

    python -m bench.nab [--data DIR] [--windows FILE] [--profiles FILE] [--results DIR]
                        [--models shipped,robust,...] [--jobs N] [--json FILE]

Each file is served to a real :class:`detector.service.Detector` by a reader that answers its
range queries from the file, with the clock set in turn to each row's grid point (the first whose
value the row is; see :func:`cycle_times`): the detector scores every row in a scoring cycle, as
``/metrics`` would publish it (stand-in model before the first fit, the query's model after,
direction, calibration, hold), so the bench measures the product. Fits are asked for between
cycles (``fit_query`` at the previous row's grid point, so a fit never sees the row it scores
next): when the file has ``--first-fit-rows`` rows, whenever
``fit_every`` (1 day) has passed, and, while the history is young, when it has doubled, as a
service that started with the file would refit once its history allows.

Specs: any registered model name (the query names it, defaults for everything else), and
``shipped``: the configuration the README gives as boxwatch's result (:data:`SHIPPED`).

Result files ``<results>/<spec>/<category>/<file>.csv`` have ``timestamp,value,anomaly_score,
score,raw_score``: ``score`` is the published score (row ``i`` uses rows ``<= i`` only),
``anomaly_score = score / (1 + score)`` (0 before any score), ``raw_score`` the band distance.

Two ways of scoring, per NAB profile:

* **swept**: NAB's own rule: the best corpus-wide threshold on ``anomaly_score``, every row above
  it a detection;
* **shipped rule**: what an operator gets from ``AnomalyScoreHigh`` (``score > 1``): one detection
  per rising edge of ``score > 1``, no threshold chosen.

Leave one category out: the calibration's ``target_rate`` is the one parameter chosen on the
corpus (from :data:`TARGET_RATES`). For each category it is chosen on the other categories'
files (the shipped-rule standard score) and that category scored with it; the five held-out
parts are then scored together. The calibration is a function of the raw scores alone, so the
rates are compared by calibrating the saved raw scores again (the same
:class:`~detector.calibration.Calibration`, refreshed at the same fits) instead of replaying;
``--recalibrate`` does the same for the result files (tested equal to a replay).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detector.config import DetectorConfig  # noqa: E402
from detector.nabscore import STANDARD_PROFILES, Profile, load_profiles, score_corpus  # noqa: E402
from detector.reader import utc_index  # noqa: E402
from detector.service import Detector  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_NAB = REPO.parent / "shared" / "bench" / "nab"
DEFAULT_MODELS = ("shipped", "robust")
ALIAS = "nab"
SHIPPED: dict[str, Any] = {"model": "context", "params": {}, "calibration": {}}
"""boxwatch's shipped configuration: the ``context`` model with its defaults (its score is published
as is: the model is ``calibrated``, so the calibration settings do not apply to it)."""
TARGET_RATES = (3e-3, 1e-2, 3e-2, 1e-1)
FIRST_FIT_ROWS = 50
FIT_EVERY = "1d"
FIT_WINDOW = "14d"


class FileReader:
    """Answers range queries from one NAB file, as Prometheus would on the query's grid.

    A grid point takes the last row at or before it, if that row is less than one step old.
    """

    def __init__(self, frame: pd.DataFrame, step: float):
        self.times = frame.index.asi8 / 1e9
        self.values = frame["value"].to_numpy(dtype=float)
        self.step = step
        self.last_request_seconds = 0.0

    def query_range(self, expr: str, start: float, end: float, step: float) -> dict:
        stamps = np.arange(start, end + step / 2, step)
        at = np.searchsorted(self.times, stamps, side="right") - 1
        ok = (at >= 0) & (stamps - self.times[np.maximum(at, 0)] < step)
        if not ok.any():
            return {}
        values = np.where(ok, self.values[np.maximum(at, 0)], np.nan)
        index = utc_index(stamps)
        return {(("__name__", "value"),): pd.Series(values, index=index, name="value")}

    def close(self) -> None:
        pass


def file_step(frame: pd.DataFrame) -> float:
    """The file's sampling interval: its most common gap between rows, in seconds."""
    gaps = np.diff(frame.index.asi8) / 1e9
    gaps = gaps[gaps > 0]
    return float(pd.Series(gaps).mode().iloc[0]) if len(gaps) else 300.0


def spec_settings(spec: str) -> dict[str, Any]:
    """Model, params and calibration of a spec: ``shipped`` or a registered model's defaults."""
    if spec == "shipped":
        return SHIPPED
    return {"model": spec, "params": {}, "calibration": {}}


def detector_config(spec: str, step: float, state_dir: str, calibration: dict | None = None) -> DetectorConfig:
    settings = spec_settings(spec)
    return DetectorConfig.model_validate({
        "schema_version": 1,
        "state_dir": state_dir,
        "queries": {ALIAS: {"expr": "value", "step": step, "model": settings["model"],
                            "params": settings["params"], "fit_every": FIT_EVERY, "fit_window": FIT_WINDOW}},
        "anomalies": {"calibration": {**settings["calibration"], **(calibration or {})}},
        "causes": {"enabled": False},
        "fitting": {"isolate": False},  # hundreds of refits a file: a process each would be most of the replay
    })


def replay(spec: str, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Published score and raw score of every row, and the rows before which a fit was installed."""
    step = file_step(frame)
    times = frame.index.asi8 / 1e9
    cycles = cycle_times(times, step)
    n = len(frame)
    score, raw = np.full(n, np.nan), np.full(n, np.nan)
    fit_rows: list[int] = []
    with tempfile.TemporaryDirectory(prefix="nab-") as state_dir:
        detector, clock = file_detector(spec, frame, state_dir)
        fit_every = pd.Timedelta(FIT_EVERY).total_seconds()
        fitted_at, fitted_rows = None, 0
        for i in range(n):
            due = fitted_at is None and i >= FIRST_FIT_ROWS or fitted_at is not None and (
                times[i - 1] - fitted_at >= fit_every or i >= 2 * fitted_rows)
            if due:
                clock["now"] = float(cycles[i - 1])
                if detector.fit_query(ALIAS, clock["now"]) is not None:
                    fit_rows.append(i)
                fitted_at, fitted_rows = float(times[i - 1]), i
            clock["now"] = float(cycles[i])
            detector.run_cycle(clock["now"])
            score[i], raw[i] = published(detector, clock["now"])
    return score, raw, fit_rows


def cycle_times(times: np.ndarray, step: float) -> np.ndarray:
    """Per row, the grid point whose scoring cycle publishes it: the first grid point whose value is
    that row (its own time on the grid, else the next grid point: a grid point takes the last row at or
    before it), or, where the next row comes first, the grid point before it (the row is never a grid
    point's value; a cycle never reads a later row)."""
    covering = np.ceil(times / step) * step
    following = np.append(times[1:], np.inf)
    return np.where(following > covering, covering, np.floor(times / step) * step)


def file_detector(spec: str, frame: pd.DataFrame, state_dir: str) -> tuple[Detector, dict[str, float]]:
    """The service for ``spec`` over a reader serving ``frame``, and its clock (``clock["now"]``, set by the caller)."""
    step = file_step(frame)
    clock = {"now": float(frame.index.asi8[0] / 1e9)}
    detector = Detector(detector_config(spec, step, state_dir), fit_sink=lambda result: result.bundle,
                        load_bundle=lambda alias: None, clock=lambda: clock["now"], reader=FileReader(frame, step))
    return detector, clock


def published(detector: Detector, grid_time: float) -> tuple[float, float]:
    """The published score and raw score of the file's series at ``grid_time`` (NaN, NaN: none yet)."""
    for point in detector.snapshot()[ALIAS]:
        if point.timestamp == grid_time:
            return point.score, point.raw_score
    return math.nan, math.nan


def recalibrate(raw: np.ndarray, fit_rows: list[int], calibration: dict[str, Any]) -> np.ndarray:
    """The published score for other calibration settings: the same calibration over the same raw
    scores, refreshed before the same rows (the replay's fits)."""
    from detector.config import CalibrationConfig

    model = CalibrationConfig(**calibration).make()
    out = np.full(len(raw), np.nan)
    cuts = sorted({0, *fit_rows, len(raw)})
    for begin, end in zip(cuts[:-1], cuts[1:], strict=True):
        if begin in fit_rows:
            model.fit_level()
        out[begin:end] = model.calibrate(raw[begin:end])
    return out


def to_anomaly_score(score: np.ndarray) -> np.ndarray:
    """``s / (1 + s)``: monotone, in ``[0, 1)``; NaN (no score yet) and negatives are 0."""
    s = np.maximum(np.nan_to_num(np.asarray(score, dtype=float), nan=0.0), 0.0)
    return s / (1.0 + s)


def rising_edges(score: np.ndarray) -> np.ndarray:
    """1.0 where ``score > 1`` starts (the row above 1 after a row that was not), else 0."""
    above = np.nan_to_num(np.asarray(score, dtype=float), nan=0.0) > 1.0
    previous = np.concatenate([[False], above[:-1]])
    return (above & ~previous).astype(float)


def read_nab_file(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path)
    missing = {"timestamp", "value"} - set(frame.columns)
    if missing:
        raise ValueError(f"{path}: missing column(s) {sorted(missing)}; NAB files have timestamp,value")
    index = pd.DatetimeIndex(pd.to_datetime(frame["timestamp"]), name="timestamp")
    return pd.DataFrame({"value": frame["value"].to_numpy(dtype=float)}, index=index)


def run_file(task: tuple[str, Path, str, Path]) -> tuple[str, str, float]:
    """Replay one file for one spec and write its result file; returns (spec, file, seconds)."""
    spec, data_dir, relative, results_dir = task
    started = time.perf_counter()
    frame = read_nab_file(data_dir / relative)
    score, raw, fit_rows = replay(spec, frame)
    out = results_dir / spec / relative
    out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({
        "timestamp": frame.index.strftime("%Y-%m-%d %H:%M:%S"),
        "value": frame["value"].to_numpy(),
        "anomaly_score": to_anomaly_score(score),
        "score": score,
        "raw_score": raw,
    }).to_csv(out, index=False)
    out.with_suffix(".fits.json").write_text(json.dumps(fit_rows))
    return spec, relative, time.perf_counter() - started


def self_calibrated(spec: str) -> bool:
    """Whether the spec's model publishes its own score (no per-series calibration to vary)."""
    from detector.models import model_class

    return bool(model_class(spec_settings(spec)["model"]).calibrated)


def rewrite_calibrated(path: Path, calibration: dict[str, Any]) -> None:
    """Replace a result file's published score with the current calibration of its raw scores."""
    frame = pd.read_csv(path)
    fits = json.loads(path.with_suffix(".fits.json").read_text())
    score = recalibrate(frame["raw_score"].to_numpy(dtype=float), fits, calibration)
    frame["score"], frame["anomaly_score"] = score, to_anomaly_score(score)
    frame.to_csv(path, index=False)


def read_result(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path)
    frame.index = pd.DatetimeIndex(pd.to_datetime(frame["timestamp"]))
    return frame


def evaluate(scores: dict[str, np.ndarray], stamps: dict[str, pd.DatetimeIndex], windows: dict,
             profiles: list[Profile]) -> dict[str, dict[str, Any]]:
    """Swept and shipped-rule results of published scores ``{file: score}``, per profile."""
    swept = score_corpus({f: (stamps[f], to_anomaly_score(s)) for f, s in scores.items()},
                         {f: windows[f] for f in scores}, profiles)
    shipped = score_corpus({f: (stamps[f], rising_edges(s)) for f, s in scores.items()},
                           {f: windows[f] for f in scores}, profiles, threshold=1.0)
    return {"swept": {name: vars(r) for name, r in swept.items()},
            "shipped_rule": {name: vars(r) for name, r in shipped.items()}}


def category(relative: str) -> str:
    return relative.split("/", 1)[0]


def leave_one_category_out(raws: dict, fits: dict, stamps: dict, windows: dict, base: dict[str, Any],
                           profiles: list[Profile]) -> dict[str, Any]:
    """Choose ``target_rate`` on four categories, score the fifth; all held-out parts together."""
    by_rate = {rate: {f: recalibrate(raws[f], fits[f], {**base, "target_rate": rate}) for f in raws}
               for rate in TARGET_RATES}
    standard = [p for p in profiles if p.name == "standard"] or profiles[:1]
    chosen, held_out = {}, {}
    for held in sorted({category(f) for f in raws}):
        rest = [f for f in raws if category(f) != held]
        if not rest:
            continue

        def shipped_standard(rate: float, files: list[str] = rest) -> float:
            result = score_corpus({f: (stamps[f], rising_edges(by_rate[rate][f])) for f in files},
                                  {f: windows[f] for f in files}, standard, threshold=1.0)
            return next(iter(result.values())).normalized

        best = max(TARGET_RATES, key=shipped_standard)
        chosen[held] = best
        held_out.update({f: by_rate[best][f] for f in raws if category(f) == held})
    result = evaluate(held_out, stamps, windows, profiles) if held_out else {}
    return {"target_rate_chosen": chosen, **result,
            "by_target_rate": {str(rate): evaluate(by_rate[rate], stamps, windows, standard)["shipped_rule"]
                               for rate in TARGET_RATES}}


def data_files(data_dir: Path, windows: dict, only: str | None) -> list[str]:
    files = sorted(str(p.relative_to(data_dir)) for p in data_dir.glob("*/*.csv"))
    files = [f for f in files if f in windows]
    if only:
        files = [f for f in files if any(part in f for part in only.split(","))]
    return files


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.nab", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_NAB / "data", help="NAB data folder (<category>/<file>.csv)"
    )
    parser.add_argument("--windows", type=Path, default=DEFAULT_NAB / "labels" / "combined_windows.json")
    parser.add_argument(
        "--profiles", type=Path, default=DEFAULT_NAB / "profiles.json",
        help="NAB profiles.json (default: the three standard profiles if absent)",
    )
    parser.add_argument(
        "--results", type=Path, default=REPO / "bench" / "results" / "nab",
        help="where <spec>/<category>/<file>.csv go",
    )
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS),
                        help="comma-separated specs: 'shipped' or registered model names")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes")
    parser.add_argument("--files", default=None,
                        help="only files whose path contains one of these comma-separated strings (development)")
    parser.add_argument("--score-only", action="store_true",
                        help="score the result files already under --results instead of replaying")
    parser.add_argument("--recalibrate", action="store_true",
                        help="no replay: apply the current calibration to the raw scores and fits saved under "
                             "--results (what a replay gives when only the calibration changed) and score")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    return parser.parse_args(argv)


def print_table(title: str, results: dict[str, dict], profiles: list[Profile]) -> None:
    print(title)
    print(f"  {'spec':<22}" + "".join(f" {p.name + ' swept':>26} {'rule':>6}" for p in profiles))
    for spec, result in results.items():
        cells = "".join(f" {result['swept'][p.name]['normalized']:>26.1f} "
                        f"{result['shipped_rule'][p.name]['normalized']:>6.1f}" for p in profiles)
        print(f"  {spec:<22}{cells}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for path in (args.data, args.windows):
        if not path.exists():
            print(f"error: {path} does not exist (pass --data/--windows)", file=sys.stderr)
            return 2
    windows = json.loads(args.windows.read_text())
    profiles = load_profiles(args.profiles) if args.profiles.exists() else list(STANDARD_PROFILES)
    specs = [m.strip() for m in args.models.split(",") if m.strip()]
    files = data_files(args.data, windows, args.files)
    if not files:
        print(f"error: no labelled <category>/<file>.csv under {args.data}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    seconds = dict.fromkeys(specs, 0.0)
    if args.recalibrate:
        for spec in (spec for spec in specs if not self_calibrated(spec)):
            for f in files:
                rewrite_calibrated(args.results / spec / f, spec_settings(spec)["calibration"])
    elif not args.score_only:
        tasks = [(spec, args.data, f, args.results) for spec in specs for f in files]
        if args.jobs > 1:
            with ProcessPoolExecutor(args.jobs) as pool:
                done = list(pool.map(run_file, tasks, chunksize=1))
        else:
            done = [run_file(t) for t in tasks]
        for spec, _, took in done:
            seconds[spec] += took
    print(f"{len(files)} files, {sum(len(windows[f]) for f in files)} windows, "
          f"wall {time.perf_counter() - started:.1f} s")
    report: dict[str, Any] = {}
    per_category: dict[str, dict] = {}
    for spec in specs:
        frames = {f: read_result(args.results / spec / f) for f in files}
        scores = {f: frame["score"].to_numpy(dtype=float) for f, frame in frames.items()}
        stamps = {f: frame.index for f, frame in frames.items()}
        report[spec] = {**evaluate(scores, stamps, windows, profiles), "cpu_seconds": seconds[spec]}
        report[spec]["categories"] = {
            cat: evaluate({f: s for f, s in scores.items() if category(f) == cat}, stamps, windows, profiles)
            for cat in sorted({category(f) for f in files})}
        per_category[spec] = report[spec]["categories"]
        if spec == "shipped" and self_calibrated(spec):
            report[spec]["leave_one_category_out"] = {
                "note": "the shipped model publishes its own score: no calibration is chosen on the corpus; "
                        "its parameters were chosen on all files (see docs/models.md)"}
        elif spec == "shipped":
            raws = {f: frame["raw_score"].to_numpy(dtype=float) for f, frame in frames.items()}
            fits = {f: json.loads((args.results / spec / f).with_suffix(".fits.json").read_text()) for f in files}
            report[spec]["leave_one_category_out"] = leave_one_category_out(
                raws, fits, stamps, windows, SHIPPED["calibration"], profiles)
    print_table("NAB normalised scores: swept threshold / shipped rule (rising edges of score > 1)",
                {spec: report[spec] for spec in specs}, profiles)
    for spec in specs:
        print_table(f"{spec} per category", per_category[spec], profiles)
        loco = report[spec].get("leave_one_category_out")
        if loco and "swept" in loco:
            print_table(f"{spec} leave one category out (target_rate chosen: {loco['target_rate_chosen']})",
                        {"held-out": loco}, profiles)
    if args.json:
        args.json.write_text(json.dumps(
            report, indent=1, default=lambda v: None if isinstance(v, float) and math.isinf(v) else v))
    return 0


if __name__ == "__main__":
    sys.exit(main())
