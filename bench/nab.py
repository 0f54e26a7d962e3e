"""Run boxwatch models online over NAB files and score them with NAB's rules.

    python -m bench.nab [--data DIR] [--windows FILE] [--profiles FILE] [--results DIR]
                        [--models robust,seasonal,iforest] [--jobs N]

Online, as the service runs: the score of row ``i`` uses rows ``<= i`` only. A model is fitted
on the rows before the current one (at most ``--train-window`` of them), refitted every
``--refit-every`` of data time (and, while the history is young, whenever it has doubled), and
between fits it scores the rows as they arrive and ``learn``s from them, one cycle at a time.
Rows before the first fit, or that a model scores NaN (not enough history), get 0.

The NAB adapter (here, not in the models) turns boxwatch scores into NAB's ``[0, 1]``, online:

1. ``s`` is the model's score (0 normal, > 1 outside its band); NaN (not enough history) -> 0.
2. Record score ``r = log(1 + s) - max(log(1 + s))`` over the previous ``--record-window``
   rows: how far the score beats the highest score of the recent past (<= 0: no record). It
   puts every stream on one scale -- a noisy stream whose scores often reach 5 needs a larger
   jump than a quiet one -- since NAB uses one threshold for the whole corpus.
3. Alert once per incident (``--suppress`` rows): a row keeps ``r`` only when it beats every
   ``r`` of the previous ``--suppress`` rows, otherwise 0. At any threshold this keeps an
   incident's first crossing and drops the repeats, as Alertmanager's grouping does for an
   operator; NAB charges for each repeated detection outside a window and rewards only the
   first inside one.
4. A combination ``a+b`` (e.g. ``robust+seasonal``) takes the larger record score of its
   models at each row (alert when either model sees a record), before step 3.
5. ``nab = r / (1 + r)`` for ``r > 0``, else 0: monotone, so NAB's threshold sweep is unaffected.

Raw model scores go to ``<results>/raw/<model>/<category>/<file>.csv``; the NAB result files
to ``<results>/<model>/<category>/<file>.csv`` (``timestamp,value,anomaly_score`` as NAB's
own, plus ``raw_score``), so each model's folder is laid out like NAB's data folder. The
scorer in :mod:`detector.nabscore` then finds each profile's best corpus-wide threshold and
the normalised scores are printed. ``--score-only`` re-applies the adapter to saved raw scores.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detector.models import make_model  # noqa: E402
from detector.nabscore import STANDARD_PROFILES, load_profiles, score_corpus  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_NAB = REPO.parent / "shared" / "bench" / "nab"
DEFAULT_MODELS = (
    "robust",
    "seasonal",
    "iforest",
    "robust+seasonal",
    "robust+iforest",
    "robust+seasonal+iforest",
)
# iforest's learn() only remembers the last row, so scoring a day's rows at once gives exactly
# the scores one-by-one scoring would; the other models learn from each row before the next.
CYCLE_ROWS = {"iforest": 288}


@dataclass(frozen=True)
class OnlineConfig:
    """How the service would run a model over a stream: one configuration for every file."""

    refit_every: str = "1D"
    train_window: str = "14D"
    first_fit_rows: int = 50
    cycle_rows: int = 1
    suppress_rows: int = 50
    record_window: int = 1500
    params: tuple[tuple[str, str, object], ...] = ()  # (model, parameter, value)


def run_online(model_name: str, frame: pd.DataFrame, config: OnlineConfig) -> np.ndarray:
    """The model's score for every row, each computed from rows up to and including it only."""
    n = len(frame)
    scores = np.full(n, np.nan)
    refit_every = pd.Timedelta(config.refit_every)
    train_window = pd.Timedelta(config.train_window)
    times = frame.index
    model, fitted_at, fitted_rows = None, None, 0
    i = config.first_fit_rows
    while i < n:
        if model is None or times[i] - fitted_at >= refit_every or i >= 2 * fitted_rows:
            start = times.searchsorted(times[i] - train_window, side="left")
            params = {key: value for name, key, value in config.params if name == model_name}
            model = make_model(model_name, params).fit(frame.iloc[start:i])
            fitted_at, fitted_rows = times[i], i
        end = min(i + CYCLE_ROWS.get(model_name, config.cycle_rows), n)
        batch = frame.iloc[i:end]
        scores[i:end] = model.score(batch)["score"].to_numpy(dtype=float)
        model.learn(batch)
        i = end
    return scores


def record_score(scores: np.ndarray, window: int) -> np.ndarray:
    """``log(1 + s)`` minus its maximum over the previous ``window`` rows (the first row: minus 0)."""
    logged = pd.Series(np.log1p(np.maximum(np.nan_to_num(np.asarray(scores, dtype=float), nan=0.0), 0.0)))
    past = logged.shift(1).rolling(window, min_periods=1).max().fillna(0.0)
    return (logged - past).to_numpy()


def alert_once(scores: np.ndarray, suppress_rows: int) -> np.ndarray:
    """``scores`` where a row beats every score of the ``suppress_rows`` rows before it, else 0."""
    scores = np.nan_to_num(np.asarray(scores, dtype=float), nan=0.0)
    if suppress_rows <= 0:
        return scores
    previous_max = (
        pd.Series(scores).shift(1).rolling(suppress_rows, min_periods=1).max().fillna(-np.inf).to_numpy()
    )
    return np.where(scores > previous_max, scores, 0.0)


def to_nab(raw_scores: list[np.ndarray], config: OnlineConfig) -> np.ndarray:
    """The NAB adapter (module docstring): record score, max over models, alert once, into [0, 1)."""
    record = np.max([record_score(s, config.record_window) for s in raw_scores], axis=0)
    kept = np.maximum(alert_once(record, config.suppress_rows), 0.0)
    return kept / (1.0 + kept)


def read_nab_file(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path)
    missing = {"timestamp", "value"} - set(frame.columns)
    if missing:
        raise ValueError(f"{path}: missing column(s) {sorted(missing)}; NAB files have timestamp,value")
    index = pd.DatetimeIndex(pd.to_datetime(frame["timestamp"]), name="timestamp")
    return pd.DataFrame({"value": frame["value"].to_numpy(dtype=float)}, index=index)


def run_file(task: tuple[str, Path, str, Path, OnlineConfig]) -> tuple[str, str, float]:
    """Run one model over one file; write its raw scores; returns (model, file, seconds)."""
    model_name, data_dir, relative, raw_dir, config = task
    started = time.perf_counter()
    frame = read_nab_file(data_dir / relative)
    raw = run_online(model_name, frame, config)
    out = raw_dir / model_name / relative
    out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"raw_score": raw}).to_csv(out, index=False)
    return model_name, relative, time.perf_counter() - started


def write_result(spec: str, data_dir: Path, relative: str, results_dir: Path, config: OnlineConfig) -> None:
    """NAB result file ``<results>/<spec>/<category>/<file>.csv`` of a model or combination."""
    frame = read_nab_file(data_dir / relative)
    raws = [
        pd.read_csv(results_dir / "raw" / name / relative)["raw_score"].to_numpy(dtype=float)
        for name in spec.split("+")
    ]
    out = results_dir / spec / relative
    out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(
        {
            "timestamp": frame.index.strftime("%Y-%m-%d %H:%M:%S"),
            "value": frame["value"].to_numpy(),
            "anomaly_score": to_nab(raws, config),
            "raw_score": np.nan_to_num(np.max(raws, axis=0), nan=0.0),
        }
    ).to_csv(out, index=False)


def read_result(path: Path) -> tuple[pd.DatetimeIndex, np.ndarray]:
    frame = pd.read_csv(path)
    return pd.DatetimeIndex(pd.to_datetime(frame["timestamp"])), frame["anomaly_score"].to_numpy(dtype=float)


def data_files(data_dir: Path, windows: dict, only: str | None) -> list[str]:
    files = sorted(str(p.relative_to(data_dir)) for p in data_dir.glob("*/*.csv"))
    files = [f for f in files if f in windows]
    if only:
        files = [f for f in files if any(part in f for part in only.split(","))]
    return files


def parse_param(text: str) -> tuple[str, str, object]:
    """``model.key=value`` -> (model, key, value), the value read as JSON where it parses."""
    target, sep, raw = text.partition("=")
    model, dot, key = target.partition(".")
    if not (sep and dot and model and key):
        raise SystemExit(f"error: --param {text!r}: expected MODEL.KEY=VALUE")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return model, key, value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.nab", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_NAB / "data", help="NAB data folder (<category>/<file>.csv)"
    )
    parser.add_argument("--windows", type=Path, default=DEFAULT_NAB / "labels" / "combined_windows.json")
    parser.add_argument(
        "--profiles",
        type=Path,
        default=DEFAULT_NAB / "profiles.json",
        help="NAB profiles.json (default: the three standard profiles if absent)",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=REPO / "bench" / "results" / "nab",
        help="where <model>/<category>/<file>.csv go",
    )
    parser.add_argument(
        "--models", default=",".join(DEFAULT_MODELS), help="comma-separated model names; a+b combines models"
    )
    parser.add_argument("--jobs", type=int, default=1, help="worker processes")
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="MODEL.KEY=VALUE",
        help="model parameter for every file, VALUE as JSON (e.g. robust.window=1000); repeatable",
    )
    parser.add_argument(
        "--files",
        default=None,
        help="only files whose path contains one of these comma-separated strings (development)",
    )
    parser.add_argument(
        "--refit-every", default=OnlineConfig.refit_every, help="refit interval in data time (pandas offset)"
    )
    parser.add_argument(
        "--train-window", default=OnlineConfig.train_window, help="history a fit sees (pandas offset)"
    )
    parser.add_argument(
        "--cycle", type=int, default=OnlineConfig.cycle_rows, help="rows scored per cycle before learn()"
    )
    parser.add_argument(
        "--suppress", type=int, default=OnlineConfig.suppress_rows, help="alert-once window in rows (0: off)"
    )
    parser.add_argument(
        "--record-window",
        type=int,
        default=OnlineConfig.record_window,
        help="rows a record score is measured against",
    )
    parser.add_argument(
        "--score-only",
        action="store_true",
        help="reuse the raw scores under <results>/raw instead of running models",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the scores as JSON here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for path in (args.data, args.windows):
        if not path.exists():
            print(f"error: {path} does not exist (pass --data/--windows)", file=sys.stderr)
            return 2
    windows = json.loads(args.windows.read_text())
    profiles = load_profiles(args.profiles) if args.profiles.exists() else list(STANDARD_PROFILES)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    files = data_files(args.data, windows, args.files)
    if not files:
        print(f"error: no labelled <category>/<file>.csv under {args.data}", file=sys.stderr)
        return 2
    config = OnlineConfig(
        args.refit_every,
        args.train_window,
        cycle_rows=args.cycle,
        suppress_rows=args.suppress,
        record_window=args.record_window,
        params=tuple(parse_param(p) for p in args.param),
    )
    components = sorted({name for spec in models for name in spec.split("+")})
    timings: dict[str, float] = dict.fromkeys(components, 0.0)
    started = time.perf_counter()
    if not args.score_only:
        tasks = [(m, args.data, f, args.results / "raw", config) for m in components for f in files]
        if args.jobs > 1:
            with ProcessPoolExecutor(args.jobs) as pool:
                done = list(pool.map(run_file, tasks, chunksize=1))
        else:
            done = [run_file(t) for t in tasks]
        for model_name, _, seconds in done:
            timings[model_name] += seconds
    for spec in models:
        for f in files:
            write_result(spec, args.data, f, args.results, config)
    report = {}
    print(
        f"{len(files)} files, {sum(len(windows[f]) for f in files)} windows, wall {time.perf_counter() - started:.1f} s"
    )
    print(f"{'model':<24} " + " ".join(f"{p.name:>20}" for p in profiles) + f" {'cpu s':>8}")
    for model_name in models:
        results = {f: read_result(args.results / model_name / f) for f in files}
        scored = score_corpus(results, {f: windows[f] for f in files}, profiles)
        seconds = sum(timings[name] for name in model_name.split("+"))
        report[model_name] = {name: vars(r) for name, r in scored.items()} | {"cpu_seconds": seconds}
        cells = " ".join(f"{scored[p.name].normalized:>20.1f}" for p in profiles)
        print(f"{model_name:<24} {cells} {seconds:>8.1f}")
    if args.json:
        args.json.write_text(
            json.dumps(
                report, indent=1, default=lambda v: None if isinstance(v, float) and math.isinf(v) else v
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
