"""boxwatch.exposition: label values escaped as Prometheus' own parser reads them back."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from boxwatch.exposition import escape_label_value, label_text


def test_escape():
    assert escape_label_value('a\\b"c\nd') == 'a\\\\b\\"c\\nd'
    assert escape_label_value(3) == "3"


def test_label_text_round_trips_through_the_parser():
    labels = (("path", 'C:\\tmp\\"x"'), ("msg", "two\nlines"), ("gpu", 0))
    text = f"# TYPE t gauge\nt{{{label_text(labels)}}} 1\n"
    sample = next(text_string_to_metric_families(text)).samples[0]
    assert sample.labels == {"path": 'C:\\tmp\\"x"', "msg": "two\nlines", "gpu": "0"}
