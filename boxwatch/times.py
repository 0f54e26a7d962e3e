"""Durations and points in time as users write them: Prometheus durations and RFC 3339.

``parse_duration("1h30m") == 5400.0``; ``format_duration(5400) == "90m"``;
``parse_rfc3339("2026-01-02T03:04:05Z")`` and ``parse_time("1767323045")`` give unix seconds.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Any

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)")
UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def parse_duration(value: Any) -> float:
    """Seconds from a Prometheus duration (``"90s"``, ``"1h30m"``, ``"14d"``) or a number of seconds."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like 30s, 5m, 14d; got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        pos, seconds = 0, 0.0
        for match in _DURATION_PART.finditer(text):
            if match.start() != pos:
                break
            seconds += float(match.group(1)) * UNIT_SECONDS[match.group(2)]
            pos = match.end()
        if pos != len(text) or not text:
            raise ValueError(f"expected a duration like 30s, 5m, 1h30m, 14d; got {value!r}")
    else:
        raise ValueError(f"expected a duration like 30s, 5m, 14d; got {value!r}")
    if seconds <= 0:
        raise ValueError(f"duration must be positive; got {value!r}")
    return seconds


def parse_bounded_duration(value: Any, low: float, high: float) -> float:
    """:func:`parse_duration` that refuses values outside ``[low, high]`` seconds, saying so in units."""
    seconds = parse_duration(value)
    if seconds < low:
        raise ValueError(f"must be at least {format_duration(low)}; got {value!r}")
    if seconds > high:
        raise ValueError(f"must be at most {format_duration(high)}; got {value!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest exact Prometheus duration for ``seconds`` (``3600`` -> ``"1h"``)."""
    for unit in ("w", "d", "h", "m", "s"):
        size = UNIT_SECONDS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{int(round(seconds * 1000))}ms"


class TimeZoneMissing(ValueError):
    """An RFC 3339 time without ``Z`` or ``+hh:mm``: which instant it names would depend on the reader."""


def parse_rfc3339(text: str) -> float:
    """Unix seconds from an RFC 3339 time; ``ValueError`` when it is not one or has no time zone."""
    try:
        parsed = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"expected an RFC 3339 time, got {text!r}") from None
    if parsed.tzinfo is None:
        raise TimeZoneMissing(f"RFC 3339 time needs a time zone (Z or +hh:mm), got {text!r}")
    return parsed.timestamp()


def parse_time(text: str) -> float:
    """Unix seconds from a finite number of seconds or an RFC 3339 time; ``ValueError`` otherwise."""
    try:
        value = float(text)
    except ValueError:
        try:
            return parse_rfc3339(text)
        except TimeZoneMissing:
            raise
        except ValueError:
            raise ValueError(f"expected RFC 3339 time or unix seconds, got {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {text!r}")
    return value
