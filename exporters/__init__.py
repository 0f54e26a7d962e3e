"""Prometheus exporters for a GPU workstation: GPUs (NVML), containers (Docker), the systemd journal."""
