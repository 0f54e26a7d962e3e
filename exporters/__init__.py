"""Prometheus exporters for a GPU workstation: GPUs (NVML), containers (Docker), the systemd journal."""

__version__ = "0.1.0"
