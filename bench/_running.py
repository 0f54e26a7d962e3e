"""Run an exporter under test as a child process for the length of a ``with`` block."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@contextmanager
def exporter_process(args: list[str], log_path: Path, env: Mapping[str, str] | None = None
                     ) -> Iterator[subprocess.Popen]:
    """``python -m exporters ARGS`` from the repository root, output in ``log_path``; stopped on exit
    with SIGTERM, then SIGKILL after 10 s."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "exporters", *args], cwd=REPO, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
