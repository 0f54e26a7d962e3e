"""Build the stand-in ``libnvidia-ml.so.1`` (fake_nvml.c) that nvidia-ml-py loads in tests and benchmarks.

The real binding does ``ctypes.CDLL("libnvidia-ml.so.1")``; a process started with
``LD_LIBRARY_PATH=<dir>`` loads this library instead of the driver's. See fake_nvml.c for the
fixture it answers from and the ``FAKE_NVML_*`` variables that configure it.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

SOURCE = Path(__file__).with_name("fake_nvml.c")
LIBRARY_NAME = "libnvidia-ml.so.1"


class CompilerMissing(RuntimeError):
    """No C compiler to build the fake library with."""


def build(directory: Path, old_driver: bool = False) -> Path:
    """Compile fake_nvml.c into ``directory/libnvidia-ml.so.1``; return ``directory``.

    ``old_driver`` leaves out the newer calls that older drivers lack (see fake_nvml.c).
    """
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        raise CompilerMissing("gcc (or cc) is needed to build the fake NVML library")
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / LIBRARY_NAME
    result = subprocess.run(
        [compiler, "-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror",
         *(["-DFAKE_NVML_OLD_DRIVER"] if old_driver else []), "-o", str(target), str(SOURCE)],
        capture_output=True, text=True, timeout=120,
    )
    if result.returncode != 0:
        raise RuntimeError(f"compiling {SOURCE} failed:\n{result.stderr}")
    return directory
