"""Seeded demo scenario: a week of a GPU workstation's metrics, ending in an incident (DEMO DATA).

* :mod:`stack.demo.scenario`: what the demo box does over time, values as a pure function of
  (seed, series, time); the incident's times.
* :mod:`stack.demo.metrics`: the scenario as prometheus_client metric families: a collector served
  live on ``/metrics`` and the OpenMetrics history for promtool.
* ``python -m stack.demo``: the command line (:mod:`stack.demo.__main__`).

Use::

    python -m stack.demo generate --out demo.om --days 7 --end now      # OpenMetrics for promtool
    promtool tsdb create-blocks-from openmetrics demo.om DATA_DIR
    python -m stack.demo serve --web.listen-address 127.0.0.1:9877 --end <same end>  # live continuation
    python -m stack.demo incident --end <same end>                       # incident times as JSON
"""

from stack.demo.metrics import DemoCollector, families_at, generate, serve, write, write_openmetrics
from stack.demo.scenario import DEFAULT_SEED, DEFAULT_STEP, DEMO_LABELS, GPUS, Incident, Scenario, incident

__all__ = ["DEFAULT_SEED", "DEFAULT_STEP", "DEMO_LABELS", "GPUS", "DemoCollector", "Incident", "Scenario",
           "families_at", "generate", "incident", "serve", "write", "write_openmetrics"]
