"""NVIDIA Xid events: parsing the kernel's ``NVRM: Xid`` lines and what the common codes mean.

The NVIDIA kernel driver reports GPU errors to the kernel log as, for example::

    NVRM: Xid (PCI:0000:01:00): 79, pid=1234, name=python3, GPU has fallen off the bus.
    NVRM: Xid (0000:3b:00): 13, Graphics SM Warp Exception on (GPC 0, TPC 0): Out Of Range Address

The catalog of what the codes mean lives in :mod:`boxwatch.xid` (the detector's cause hints read it too).
"""

from __future__ import annotations

import re
from typing import NamedTuple

from boxwatch.xid import CATALOG, XidCode, describe

__all__ = ["CATALOG", "XidCode", "XidEvent", "describe", "nvml_bus_id", "parse_xid"]


_XID_LINE = re.compile(r"NVRM: Xid \((?:PCI:)?(?P<pci>[0-9a-fA-F]{1,8}(?::[0-9a-fA-F]{1,4}){1,2}(?:\.[0-7])?)\): "
                       r"(?P<xid>\d{1,4})\b")


class XidEvent(NamedTuple):
    pci_bus_id: str
    xid: int


def parse_xid(message: str) -> XidEvent | None:
    """The PCI bus id (in NVML's form, see :func:`nvml_bus_id`) and Xid code of an ``NVRM: Xid`` line."""
    match = _XID_LINE.search(message)
    if match is None:
        return None
    return XidEvent(nvml_bus_id(match["pci"]), int(match["xid"]))


def nvml_bus_id(kernel_id: str) -> str:
    """``0000:01:00`` (as the kernel prints it) -> ``00000000:01:00.0`` (as NVML reports ``busId``).

    One form for both exporters, so ``boxwatch_gpu_xid_errors_total`` joins with
    ``boxwatch_gpu_info`` on ``pci_bus_id`` without a ``label_replace``.
    """
    address, _, function = kernel_id.lower().partition(".")
    parts = address.split(":")
    if len(parts) == 2:  # bus:device without a domain
        parts.insert(0, "0")
    domain, bus, device = parts
    return f"{int(domain, 16):08x}:{int(bus, 16):02x}:{int(device, 16):02x}.{function or '0'}"
