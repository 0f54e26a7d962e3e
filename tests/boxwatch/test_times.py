"""boxwatch.times: Prometheus durations and RFC 3339 times, as every CLI, config and API reads them."""

from __future__ import annotations

import pytest

from boxwatch.times import (
    TimeZoneMissing,
    format_duration,
    parse_bounded_duration,
    parse_duration,
    parse_rfc3339,
    parse_time,
)


@pytest.mark.parametrize(("text", "seconds"), [
    ("90s", 90.0), ("1h30m", 5400.0), ("14d", 14 * 86400.0), ("250ms", 0.25), ("1.5h", 5400.0), (30, 30.0),
])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5", "5x", "m5", "1h 30m", True, None, "0s", -3])
def test_parse_duration_refuses(text):
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize("seconds", [0.25, 1, 59, 90, 3600, 5400, 86400, 7 * 86400, 366 * 86400])
def test_format_duration_round_trips(seconds):
    assert parse_duration(format_duration(seconds)) == seconds


def test_bounded_duration_names_the_bound_in_units():
    assert parse_bounded_duration("1h", 1, 86400) == 3600
    with pytest.raises(ValueError, match="must be at most 1d"):
        parse_bounded_duration("2d", 1, 86400)
    with pytest.raises(ValueError, match="must be at least 1m"):
        parse_bounded_duration("30s", 60, 86400)


def test_rfc3339():
    assert parse_rfc3339("2026-01-02T03:04:05Z") == 1767323045.0
    assert parse_rfc3339("2026-01-02T04:04:05+01:00") == 1767323045.0
    with pytest.raises(TimeZoneMissing, match="time zone"):
        parse_rfc3339("2026-01-02T03:04:05")
    with pytest.raises(ValueError, match="expected an RFC 3339 time"):
        parse_rfc3339("yesterday")


def test_parse_time_takes_numbers_or_rfc3339():
    assert parse_time("1767323045") == parse_time("2026-01-02T03:04:05Z") == 1767323045.0
    with pytest.raises(ValueError, match="finite"):
        parse_time("inf")
    with pytest.raises(ValueError, match="expected RFC 3339 time or unix seconds"):
        parse_time("soon")
    with pytest.raises(TimeZoneMissing):
        parse_time("2026-01-02T03:04:05")
