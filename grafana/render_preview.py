"""Render docs/img/anomaly-overview.png: the Anomaly overview's main panels on the demo scenario.

    PYTHONPATH=. python grafana/render_preview.py [--out docs/img/anomaly-overview.png]

No Grafana is needed: the picture is drawn with matplotlib from the demo scenario (stack/demo/,
seed 7) and the detector's real robust model (an hour's window, k 4, direction above, 5 °C minimum
deviation), fitted on the history before the window and then scoring minute by minute as the
service does (score, then learn only normal points). It shows what the dashboard shows: the observed
series inside/outside its expected band, the anomaly score crossing 1, and the journal's error burst.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from detector.models import make_model  # noqa: E402
from stack.demo import Scenario  # noqa: E402

END = 1_767_225_600.0  # fixed, so the picture is reproducible
HOUR = 3600.0


def _series(scenario: Scenario, metric: str, **labels) -> pd.Series:
    t = scenario.times()
    for name, _, series_labels, values in scenario.series(t):
        if name == metric and all(dict(series_labels).get(k) == v for k, v in labels.items()):
            return pd.Series(values, index=pd.to_datetime(t, unit="s", utc=True))
    raise KeyError(metric)


def score_like_the_detector(values: pd.Series, fit_until: pd.Timestamp, min_deviation: float,
                            params: dict) -> pd.DataFrame:
    """Fit on everything before ``fit_until``, then score and learn point by point (direction above)."""
    model = make_model("robust", params).fit(values[values.index < fit_until].to_frame("value"))
    rows = []
    for index in range(int((values.index >= fit_until).argmax()), len(values)):
        point = values.iloc[index:index + 1].to_frame("value")
        scored = model.score(point)
        deviation = float(point["value"].iloc[0] - scored["expected"].iloc[0])
        score = float(scored["score"].iloc[0]) if deviation > min_deviation else 0.0
        rows.append({**scored.iloc[0][["expected", "lower", "upper"]].to_dict(), "score": score})
        model.learn(point)
    return pd.DataFrame(rows, index=values.index[values.index >= fit_until])


def render(out: Path) -> None:
    scenario = Scenario(END, days=7, step=60)
    inc = scenario.incident
    window_start = pd.Timestamp(END - 12 * HOUR, unit="s", tz="UTC")
    xid = pd.Timestamp(inc.xid, unit="s", tz="UTC")
    temp = _series(scenario, "boxwatch_gpu_temperature_celsius", gpu="0")
    scored = score_like_the_detector(temp, window_start, min_deviation=5.0, params={"window": 60, "k": 4.0})
    temp = temp[window_start:]
    throttled = _series(scenario, "boxwatch_gpu_throttle_active", gpu="0", reason="sw_thermal_slowdown")[window_start:]
    errors = {}
    for unit in ("kernel", "docker.service"):
        count = _series(scenario, "boxwatch_journal_entries_total", unit=unit, priority="err")
        errors[unit] = (count.diff() * 1.0).rolling(5, min_periods=1).sum()[window_start:]  # lines per 5 minutes

    fig, axes = plt.subplots(3, 1, figsize=(11, 8), sharex=True)
    fig.suptitle("boxwatch / Anomaly overview: DEMO DATA (stack/demo.py, seed 7)", fontsize=12)
    ax = axes[0]
    ax.fill_between(scored.index, scored["lower"], scored["upper"], color="tab:blue", alpha=0.2,
                    label="expected band (robust model, window 1h, k 4)")
    ax.plot(scored.index, scored["expected"], color="tab:blue", ls="--", lw=1, label="expected")
    ax.plot(temp.index, temp, color="tab:orange", lw=1, label="gpu 0 temperature, observed (°C)")
    ax.fill_between(throttled.index, 0, 1, where=throttled > 0, transform=ax.get_xaxis_transform(),
                    color="red", alpha=0.12, label="thermal slowdown active")
    ax.set_ylabel("°C")
    ax.legend(loc="upper left", fontsize=8)
    ax = axes[1]
    ax.plot(scored.index, scored["score"], color="tab:purple", lw=1.5, label="boxwatch_anomaly_score")
    ax.axhline(1, color="orange", ls=":", lw=1.2, label="1: outside the band (AnomalyScoreHigh warning)")
    ax.axhline(2, color="red", ls=":", lw=1.2, label="2: critical")
    ax.set_ylim(0, max(4.0, float(scored["score"].max()) * 1.1))
    ax.set_ylabel("score")
    ax.legend(loc="upper left", fontsize=8)
    ax = axes[2]
    for unit, values in errors.items():
        ax.plot(values.index, values, lw=1.2, label=f"{unit}: err lines per 5 min")
    ax.set_ylabel("lines / 5 min")
    ax.legend(loc="upper left", fontsize=8)
    for ax in axes:
        ax.axvline(xid, color="black", lw=0.8)
        ax.grid(alpha=0.3)
    axes[0].annotate("Xid 79 ", (xid, 0.05), xycoords=("data", "axes fraction"), fontsize=8, ha="right")
    axes[-1].set_xlabel("UTC (last 12 hours of the demo week)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs/img/anomaly-overview.png")
    render(parser.parse_args().out)


if __name__ == "__main__":
    main()
