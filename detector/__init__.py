"""The boxwatch detector: Prometheus range queries in, anomaly scores out."""

__version__ = "0.1.0"
