"""Writing Prometheus / OpenMetrics text by hand (backfill files, remote-write tests, the demo).

Exporters build metric families with prometheus_client; what writes exposition text itself (a
backfill file for ``promtool tsdb create-blocks-from openmetrics``) escapes label values here.
"""

from __future__ import annotations

from collections.abc import Iterable


def escape_label_value(value: object) -> str:
    """A label value as the text formats quote it: backslash, double quote and newline escaped."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def label_text(labels: Iterable[tuple[str, object]]) -> str:
    """``k1="v1",k2="v2"``: what goes between the braces of a sample line, in the given order."""
    return ",".join(f'{name}="{escape_label_value(value)}"' for name, value in labels)
