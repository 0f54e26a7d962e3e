"""Exposition text outside a scrape: label escaping and timestamped OpenMetrics histories.

Exporters build metric families with prometheus_client; what writes exposition text itself (a
backfill file for ``promtool tsdb create-blocks-from openmetrics``) escapes label values here.

:func:`write_history` writes a family whose series have many timestamped samples (a backfill).
prometheus_client's OpenMetrics encoder can say that (a sample has an optional timestamp), but it
builds each line from scratch, sorting and escaping the labels every time: ten times slower than
the text it replaces (40 s for a two-million-sample week). So the encoder renders each series
once, and the samples reuse that line's name and labels with their own value and timestamp.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TextIO

from prometheus_client.core import Metric
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.utils import floatToGoString

_EOF = "# EOF\n"
# In these a point is several samples (buckets, count, sum) that OpenMetrics wants together, in time order.
_GROUPED_TYPES = ("histogram", "gaugehistogram", "summary")


def escape_label_value(value: object) -> str:
    """A label value as the text formats quote it: backslash, double quote and newline escaped."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def label_text(labels: Iterable[tuple[str, object]]) -> str:
    """``k1="v1",k2="v2"``: what goes between the braces of a sample line, in the given order."""
    return ",".join(f'{name}="{escape_label_value(value)}"' for name, value in labels)


class _One:
    """What prometheus_client's encoders take: an object whose ``collect()`` yields the families."""

    def __init__(self, family: Metric):
        self._family = family

    def collect(self) -> list[Metric]:
        return [self._family]


def write_history(out: TextIO, family: Metric, series: Sequence[tuple[str, Mapping[str, str], Sequence[float]]],
                  timestamps: Sequence[float]) -> int:
    """Write ``family`` (name, help, type) as OpenMetrics, without ``# EOF``; return the sample count.

    ``series`` are (sample name, labels, values) with one value per timestamp (unix seconds); a NaN
    value is no sample. Counters and gauges are written series by series; histograms and summaries
    time by time, so that each point's buckets, count and sum stay together.
    """
    header = Metric(family.name, family.documentation, family.type, family.unit)
    for name, labels, _ in series:
        header.add_sample(name, dict(labels), 0.0)
    lines = openmetrics_latest(_One(header)).decode("utf-8").removesuffix(_EOF).splitlines(keepends=True)
    head = [line for line in lines if line.startswith("#")]
    prefixes = [line[: line.rindex(" ") + 1] for line in lines if not line.startswith("#")]
    out.writelines(head)
    stamps = [f" {int(t)}\n" if float(t).is_integer() else f" {float(t)!r}\n" for t in timestamps]
    columns = [values.tolist() if hasattr(values, "tolist") else list(values) for _, _, values in series]
    count = 0
    if family.type in _GROUPED_TYPES:
        for index, stamp in enumerate(stamps):
            for prefix, values in zip(prefixes, columns, strict=True):
                if not math.isnan(values[index]):
                    out.write(prefix + floatToGoString(values[index]) + stamp)
                    count += 1
        return count
    for prefix, values in zip(prefixes, columns, strict=True):
        lines = [prefix + floatToGoString(value) + stamp
                 for value, stamp in zip(values, stamps, strict=True) if not math.isnan(value)]
        out.writelines(lines)
        count += len(lines)
    return count
