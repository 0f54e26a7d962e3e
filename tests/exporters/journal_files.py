"""Real journal files for the tests, written by systemd-journal-remote from Journal Export Format."""

from __future__ import annotations

import itertools
import struct
import subprocess
import time
from pathlib import Path

from tests.harness import require_binary

BOOT_ID = "0123456789abcdef0123456789abcdef"
BOOT_TIME_US = 1_700_000_000_000_000
_clock = itertools.count(1)


def journal_remote() -> str:
    return require_binary("systemd-journal-remote", "/lib/systemd/systemd-journal-remote",
                          "/usr/lib/systemd/systemd-journal-remote")


def export_entry(fields: dict[str, str | bytes | int], realtime_us: int | None = None) -> bytes:
    """One entry in Journal Export Format. ``bytes`` values use the binary (length-prefixed) form."""
    if realtime_us is None:
        realtime_us = int(time.time() * 1e6) + next(_clock)
    # one boot for every file: entries of different files are ordered by their monotonic time
    monotonic_us = realtime_us - BOOT_TIME_US
    out = [f"__REALTIME_TIMESTAMP={realtime_us}\n__MONOTONIC_TIMESTAMP={monotonic_us}\n"
           f"_BOOT_ID={BOOT_ID}\n".encode()]
    for key, value in fields.items():
        if isinstance(value, bytes):
            out.append(key.encode() + b"\n" + struct.pack("<Q", len(value)) + value + b"\n")
        else:
            out.append(f"{key}={value}\n".encode())
    out.append(b"\n")
    return b"".join(out)


def write_journal(path: Path, entries: list[dict]) -> None:
    """Append ``entries`` to the journal file ``path`` (created if missing; the name ends in .journal)."""
    data = b"".join(export_entry(e) for e in entries)
    result = subprocess.run([journal_remote(), f"--output={path}", "-"], input=data,
                            capture_output=True, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"systemd-journal-remote failed: {result.stderr.decode(errors='replace')}")
    written = result.stderr.decode(errors="replace")
    if f"writing {len(entries)} entries" not in written:
        raise RuntimeError(f"systemd-journal-remote did not write {len(entries)} entries: {written}")


def unit_entry(unit: str, message: str | bytes, priority: int | None = 6, **extra) -> dict:
    fields: dict = {"_SYSTEMD_UNIT": unit, "SYSLOG_IDENTIFIER": unit.split(".")[0], "_TRANSPORT": "journal"}
    if priority is not None:
        fields["PRIORITY"] = priority
    fields["MESSAGE"] = message
    fields.update(extra)
    return fields


def kernel_entry(message: str, priority: int = 3) -> dict:
    return {"_TRANSPORT": "kernel", "SYSLOG_IDENTIFIER": "kernel", "PRIORITY": priority, "MESSAGE": message}
