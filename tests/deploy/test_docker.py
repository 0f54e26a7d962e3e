"""The Dockerfile lints clean, and the scripts the image runs behave: requirement extraction,
the entrypoint's program and shard selection, the health check."""

from __future__ import annotations

import importlib.util
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from stack.webhook import WebhookSink
from tests.harness import REPO, free_port, require_binary

DOCKER = REPO / "deploy" / "docker"


def _hadolint() -> str:
    return require_binary("hadolint", str(Path(sys.executable).parent / "hadolint"))


def test_hadolint_passes_on_the_dockerfile():
    result = subprocess.run([_hadolint(), str(REPO / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_would_catch_a_bad_instruction(tmp_path):
    """The lint is live: an unpinned apt-get install without cleanup is reported."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:bookworm\nRUN apt-get update && apt-get install -y curl\n")
    result = subprocess.run([_hadolint(), str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "DL3008" in result.stdout or "DL3015" in result.stdout


def test_dockerfile_runs_as_a_fixed_non_root_user_with_healthcheck_and_labels():
    text = (REPO / "Dockerfile").read_text()
    final_stage = text.rsplit("\nFROM ", 1)[1]
    assert "ARG BOXWATCH_UID=10001" in final_stage
    assert "USER ${BOXWATCH_UID}:${BOXWATCH_UID}" in final_stage
    assert 'HEALTHCHECK' in final_stage and "boxwatch-healthcheck" in final_stage
    for label in ("title", "version", "revision", "created", "source", "licenses"):
        assert f"org.opencontainers.image.{label}=" in final_stage
    assert 'ENTRYPOINT ["boxwatch-entrypoint"]' in final_stage


@pytest.mark.parametrize("script", ["entrypoint.sh", "healthcheck.py"])
def test_scripts_the_image_runs_are_executable(script):
    """COPY keeps the mode from the build context: without +x the container cannot start."""
    assert (DOCKER / script).stat().st_mode & stat.S_IXUSR


# --------------------------------------------------------------------------- requirements.py


def _requirements(extras: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, str(DOCKER / "requirements.py"), str(REPO / "pyproject.toml"), extras],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_requirements_of_all_are_the_union_of_every_extra():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    optional = project["optional-dependencies"]
    expected = set(project["dependencies"])
    for extra in ("gpu", "containers", "journald", "detector"):
        expected |= set(optional[extra])
    assert set(_requirements("all")) == expected
    assert not any(r.startswith("boxwatch") for r in _requirements("all"))


def test_requirements_of_one_extra_leave_the_others_out():
    gpu_only = _requirements("gpu")
    assert any(r.startswith("nvidia-ml-py") for r in gpu_only)
    # docker names the container that holds a GPU process (docs/gpu.md); the detector's and the
    # journal's stacks stay out
    assert not any(r.startswith(("mlflow", "systemd-python", "scikit-learn")) for r in gpu_only)


def test_requirements_rejects_an_unknown_extra():
    result = subprocess.run(
        [sys.executable, str(DOCKER / "requirements.py"), str(REPO / "pyproject.toml"), "gpu,cuda"],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode != 0
    assert "unknown extra 'cuda'" in result.stderr


# --------------------------------------------------------------------------- entrypoint


@pytest.fixture
def fake_programs(tmp_path):
    """A PATH whose boxwatch-* programs print the arguments they were started with."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name in ("boxwatch-exporter", "boxwatch-detector", "boxwatch-stack", "mlflow"):
        program = bindir / name
        program.write_text(f'#!/bin/sh\necho "{name}" "$@"\n')
        program.chmod(0o755)
    return bindir


def _entrypoint(bindir: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {"PATH": f"{bindir}:/usr/bin:/bin", "HOSTNAME": "box", **env}
    return subprocess.run(["sh", str(DOCKER / "entrypoint.sh"), *args], capture_output=True, text=True,
                          env=environ, timeout=30)


@pytest.mark.parametrize(("args", "expected"), [
    (["exporter", "gpu", "--web.listen-address=:9872"], "boxwatch-exporter gpu --web.listen-address=:9872"),
    (["stack", "webhook", "--listen", "0.0.0.0:9876"], "boxwatch-stack webhook --listen 0.0.0.0:9876"),
    (["detector", "train", "--config", "c.yml"], "boxwatch-detector train --config c.yml"),
    (["boxwatch-exporter", "journald"], "boxwatch-exporter journald"),
    (["mlflow", "server", "--port=5000"], "mlflow server --port=5000"),
])
def test_entrypoint_maps_short_names_to_programs(fake_programs, args, expected):
    result = _entrypoint(fake_programs, *args)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected


def test_entrypoint_takes_the_shard_from_the_statefulset_hostname(fake_programs):
    result = _entrypoint(fake_programs, "detector", "serve", "--config", "c.yml",
                         HOSTNAME="boxwatch-detector-2", BOXWATCH_SHARD_COUNT="3")
    assert result.stdout.strip() == "boxwatch-detector serve --config c.yml --shard 2/3"


def test_entrypoint_prefers_the_pod_index_label(fake_programs):
    result = _entrypoint(fake_programs, "detector", "serve", HOSTNAME="weird-name-x",
                         BOXWATCH_SHARD_INDEX="1", BOXWATCH_SHARD_COUNT="4")
    assert result.stdout.strip() == "boxwatch-detector serve --shard 1/4"


def test_entrypoint_keeps_an_explicit_shard_and_leaves_other_commands_alone(fake_programs):
    explicit = _entrypoint(fake_programs, "detector", "serve", "--shard", "0/2",
                           HOSTNAME="d-1", BOXWATCH_SHARD_COUNT="2")
    assert explicit.stdout.strip() == "boxwatch-detector serve --shard 0/2"
    train = _entrypoint(fake_programs, "detector", "train", HOSTNAME="d-1", BOXWATCH_SHARD_COUNT="2")
    assert train.stdout.strip() == "boxwatch-detector train"
    unsharded = _entrypoint(fake_programs, "detector", "serve", HOSTNAME="d-1")
    assert unsharded.stdout.strip() == "boxwatch-detector serve"


@pytest.mark.parametrize(("hostname", "count", "message"), [
    ("detector", "3", "must be numbers"),
    ("detector-5", "3", "not below BOXWATCH_SHARD_COUNT=3"),
    ("detector-1", "three", "must be numbers"),
])
def test_entrypoint_refuses_a_shard_it_cannot_derive(fake_programs, hostname, count, message):
    result = _entrypoint(fake_programs, "detector", "serve", HOSTNAME=hostname, BOXWATCH_SHARD_COUNT=count)
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stdout == ""


# --------------------------------------------------------------------------- healthcheck


def _healthcheck_module():
    spec = importlib.util.spec_from_file_location("boxwatch_healthcheck", DOCKER / "healthcheck.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("argv", "url"), [
    (["/opt/boxwatch/bin/python3", "/opt/boxwatch/bin/boxwatch-exporter", "gpu", "--web.listen-address=:9872"],
     "http://127.0.0.1:9872/healthz"),
    (["python", "/opt/boxwatch/bin/boxwatch-exporter", "journald", "--web.listen-address", "10.0.0.5:19874"],
     "http://10.0.0.5:19874/healthz"),
    (["python", "/opt/boxwatch/bin/boxwatch-exporter", "containers"], "http://127.0.0.1:9873/healthz"),
    (["python", "/opt/boxwatch/bin/boxwatch-stack", "webhook", "--listen", "0.0.0.0:9876"],
     "http://127.0.0.1:9876/healthz"),
    (["python", "/opt/boxwatch/bin/boxwatch-stack", "webhook", "--web.listen-address=:19876"],
     "http://127.0.0.1:19876/healthz"),
    (["python", "/opt/boxwatch/bin/boxwatch-detector", "serve", "--config=/c.yml"], "http://127.0.0.1:9875/healthz"),
    (["python", "/opt/boxwatch/bin/mlflow", "server", "--host=0.0.0.0", "--port=5001"], "http://127.0.0.1:5001/health"),
])
def test_healthcheck_finds_the_port_of_the_program_it_checks(argv, url):
    assert _healthcheck_module().health_url(argv) == url


def test_healthcheck_refuses_an_unknown_program():
    with pytest.raises(ValueError, match="BOXWATCH_HEALTHCHECK_URL"):
        _healthcheck_module().health_url(["sleep", "100"])


def test_healthcheck_exit_status_follows_the_endpoint():
    sink = WebhookSink().start()
    try:
        env = {**os.environ, "BOXWATCH_HEALTHCHECK_URL": f"http://127.0.0.1:{sink.port}/healthz"}
        healthy = subprocess.run([sys.executable, str(DOCKER / "healthcheck.py")], env=env,
                                 capture_output=True, text=True, timeout=30)
        assert healthy.returncode == 0, healthy.stderr
        env["BOXWATCH_HEALTHCHECK_URL"] = f"http://127.0.0.1:{sink.port}/nowhere"
        not_found = subprocess.run([sys.executable, str(DOCKER / "healthcheck.py")], env=env,
                                   capture_output=True, text=True, timeout=30)
        assert not_found.returncode == 1
    finally:
        sink.stop()
    env["BOXWATCH_HEALTHCHECK_URL"] = f"http://127.0.0.1:{free_port()}/healthz"
    closed = subprocess.run([sys.executable, str(DOCKER / "healthcheck.py")], env=env,
                            capture_output=True, text=True, timeout=30)
    assert closed.returncode == 1
    assert "healthcheck:" in closed.stderr
