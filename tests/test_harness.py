"""The test harness itself: history loaded with promtool is queryable; Alertmanager reaches the sink."""

from __future__ import annotations

import time

import pytest
import requests

from tests.harness import backfill, openmetrics

pytestmark = pytest.mark.slow  # Prometheus and Alertmanager processes


def test_days_of_history_backfilled_with_promtool(start_prometheus, tmp_path):
    end = int(time.time()) // 60 * 60
    start = end - 3 * 86400
    samples = [(t, float(t % 3600)) for t in range(start, end, 300)]
    counter = [(t, float(i)) for i, t in enumerate(range(start, end, 300))]
    text = openmetrics(
        {
            ("boxwatch_test_gauge", (("gpu", "0"),)): samples,
            ("boxwatch_test_events_total", (("unit", "a.service"),)): counter,
        },
        types={"boxwatch_test_events_total": "counter"},
    )
    data = tmp_path / "tsdb"
    backfill(data, text)
    prom = start_prometheus(data_dir=data)
    result = prom.query_range('boxwatch_test_gauge{gpu="0"}', start, end, "1h")
    assert len(result) == 1
    assert len(result[0]["values"]) >= 71  # three days, hourly
    increase = prom.query("increase(boxwatch_test_events_total[1d])", time=end - 600)
    assert 280 < float(increase[0]["value"][1]) < 300  # one event per 5 minutes


def test_alertmanager_delivers_to_the_webhook_sink(start_alertmanager, webhook):
    am = start_alertmanager({
        "route": {"receiver": "sink", "group_wait": "0s", "group_interval": "1s"},
        "receivers": [{"name": "sink", "webhook_configs": [{"url": webhook.url}]}],
    })
    alert = {"labels": {"alertname": "HarnessCheck", "severity": "warning"},
             "annotations": {"summary": "harness"}}
    requests.post(f"{am.url}/api/v2/alerts", json=[alert], timeout=10).raise_for_status()
    assert webhook.wait_for(lambda alerts: any(a["labels"]["alertname"] == "HarnessCheck" for a in alerts), 30)
    assert am.alerts()[0]["labels"]["alertname"] == "HarnessCheck"
