"""boxwatch.exposition: label values escaped as Prometheus' own parser reads them back; histories."""

from __future__ import annotations

import io
import math

from prometheus_client.core import Metric
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics
from prometheus_client.parser import text_string_to_metric_families

from boxwatch.exposition import escape_label_value, label_text, write_history


def test_escape():
    assert escape_label_value('a\\b"c\nd') == 'a\\\\b\\"c\\nd'
    assert escape_label_value(3) == "3"


def test_label_text_round_trips_through_the_parser():
    labels = (("path", 'C:\\tmp\\"x"'), ("msg", "two\nlines"), ("gpu", 0))
    text = f"# TYPE t gauge\nt{{{label_text(labels)}}} 1\n"
    sample = next(text_string_to_metric_families(text)).samples[0]
    assert sample.labels == {"path": 'C:\\tmp\\"x"', "msg": "two\nlines", "gpu": "0"}


def test_write_history_keeps_every_timestamped_value():
    """A counter's history, read back by prometheus_client's OpenMetrics parser: labels escaped by the
    encoder, a NaN is no sample, whole and fractional timestamps both kept."""
    out = io.StringIO()
    labels = {"path": 'C:\\tmp\\"x"', "msg": "two\nlines"}
    count = write_history(out, Metric("jobs", "Jobs run.", "counter"),
                          [("jobs_total", labels, [1.0, math.nan, 3.5]), ("jobs_total", {"path": "/"}, [0, 1, 2e10])],
                          [100, 160, 220.5])
    out.write("# EOF\n")
    [family] = openmetrics(out.getvalue())
    read = [(s.labels, s.value, s.timestamp.sec + s.timestamp.nsec / 1e9) for s in family.samples]
    assert (family.name, family.type, family.documentation) == ("jobs", "counter", "Jobs run.")
    assert read == [(labels, 1.0, 100), (labels, 3.5, 220.5),
                    ({"path": "/"}, 0, 100), ({"path": "/"}, 1, 160), ({"path": "/"}, 2e10, 220.5)]
    assert count == 5


def test_write_history_writes_a_histogram_point_by_point():
    out = io.StringIO()
    count = write_history(out, Metric("cycle_seconds", "Cycle time.", "histogram"), [
        ("cycle_seconds_bucket", {"le": "1.0"}, [1, 1]),
        ("cycle_seconds_bucket", {"le": "+Inf"}, [1, 2]),
        ("cycle_seconds_count", {}, [1, 2]),
        ("cycle_seconds_sum", {}, [0.5, 2.0]),
    ], [10, 20])
    samples = [line for line in out.getvalue().splitlines() if not line.startswith("#")]
    assert count == 8 and samples == [
        'cycle_seconds_bucket{le="1.0"} 1.0 10', 'cycle_seconds_bucket{le="+Inf"} 1.0 10',
        "cycle_seconds_count 1.0 10", "cycle_seconds_sum 0.5 10",
        'cycle_seconds_bucket{le="1.0"} 1.0 20', 'cycle_seconds_bucket{le="+Inf"} 2.0 20',
        "cycle_seconds_count 2.0 20", "cycle_seconds_sum 2.0 20",
    ]
