"""Prometheus job name of each boxwatch component: what prometheus/prometheus.yml scrapes it as.

The stack's generated configuration, the demo scenario's ``job`` labels and the tests read it here;
the deployment files (compose, Kubernetes) and the alert rules use the same names (tests check them).
"""

from __future__ import annotations

JOBS = {
    "prometheus": "prometheus",
    "alertmanager": "alertmanager",
    "gpu": "boxwatch-gpu",
    "containers": "boxwatch-containers",
    "journald": "boxwatch-journald",
    "detector": "boxwatch-detector",
    "demo": "boxwatch-demo",
    "node": "boxwatch-node",
}
