"""The boxwatch detector: Prometheus range queries in, anomaly scores out."""
