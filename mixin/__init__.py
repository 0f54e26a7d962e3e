"""boxwatch's monitoring mixin: alert and recording rules and Grafana dashboards as one unit.

``mixin.config`` holds the job names and every alert threshold and ``for:`` duration; ``mixin.rules``
and ``mixin.dashboards`` build the rule groups and the dashboards from it as data; ``python -m
mixin.generate`` writes them to prometheus/rules/*.yml, prometheus/thresholds.yml and
grafana/dashboards/*.json (and refreshes the Kubernetes PrometheusRule that copies the rule files).
"""
