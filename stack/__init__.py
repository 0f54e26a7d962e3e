"""boxwatch-stack: run Prometheus, Alertmanager, the exporters and the detector on localhost."""
