"""boxwatch-stack: run Prometheus, Alertmanager, the exporters and the detector on localhost."""

__version__ = "0.1.0"
