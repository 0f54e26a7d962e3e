"""Static checks of the shipped code and configs, run as part of the test command."""

from __future__ import annotations

import subprocess
import sys

from stack.runtime import COMPONENTS, DEFAULT_PORTS, Layout, render_prometheus_config
from tests.harness import REPO, require_binary


def test_ruff_is_clean():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", str(REPO)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_accepts_the_shipped_prometheus_config():
    promtool = require_binary("promtool", "/usr/bin/promtool")
    result = subprocess.run([promtool, "check", "config", "--syntax-only", str(REPO / "prometheus" / "prometheus.yml")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_accepts_the_config_the_native_stack_generates(tmp_path):
    """The rewritten config, with the real rule files resolved, as `boxwatch-stack up` runs it."""
    promtool = require_binary("promtool", "/usr/bin/promtool")
    path = render_prometheus_config(Layout(REPO, tmp_path), DEFAULT_PORTS, COMPONENTS)
    result = subprocess.run([promtool, "check", "config", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
