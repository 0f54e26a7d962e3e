"""docker-compose.yml: valid for Debian's docker-compose 1.29, and in step with the CLIs' defaults,
prometheus/prometheus.yml's targets and alertmanager/alertmanager.yml's webhook."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from urllib.parse import urlparse

import pytest
import yaml

from tests.harness import REPO, require_binary

COMPOSE_FILE = REPO / "docker-compose.yml"
BOXWATCH_SERVICES = {"webhook", "mlflow", "gpu-exporter", "containers-exporter", "journald-exporter", "detector"}
PROGRAMS = {"exporter": "boxwatch-exporter", "detector": "boxwatch-detector", "stack": "boxwatch-stack"}


def _compose(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    binary = require_binary("docker-compose")
    environ = {k: v for k, v in os.environ.items() if not k.startswith("BOXWATCH_")}
    environ.update(env or {})
    return subprocess.run([binary, "-f", str(COMPOSE_FILE), *args], capture_output=True, text=True,
                          env=environ, timeout=120, cwd=REPO)


@pytest.fixture(scope="module")
def config() -> dict:
    """The compose file as docker-compose resolves it (anchors merged, variables filled in)."""
    result = _compose("config", env={"BOXWATCH_GRAFANA_ADMIN_PASSWORD": "s3cret"})
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


@pytest.fixture(scope="module")
def prometheus_targets() -> dict[str, str]:
    """job name -> the one ``host:port`` target it scrapes."""
    prom = yaml.safe_load((REPO / "prometheus" / "prometheus.yml").read_text())
    return {job["job_name"]: job["static_configs"][0]["targets"][0] for job in prom["scrape_configs"]}


def test_compose_config_is_valid():
    result = _compose("config", "-q", env={"BOXWATCH_GRAFANA_ADMIN_PASSWORD": "s3cret"})
    assert result.returncode == 0, result.stderr


def test_grafana_admin_password_is_required():
    result = _compose("config", "-q")
    assert result.returncode != 0
    assert "BOXWATCH_GRAFANA_ADMIN_PASSWORD" in result.stderr


def test_every_service_has_a_healthcheck(config):
    for name, service in config["services"].items():
        test = service.get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), f"service {name} has no health check"


def test_boxwatch_services_run_the_image_built_here_without_root(config):
    for name in BOXWATCH_SERVICES:
        service = config["services"][name]
        assert service["build"]["context"] == str(REPO), name
        assert service["image"] == config["services"]["detector"]["image"], name
        assert "user" not in service, f"{name} overrides the image's non-root user"
        assert not service.get("privileged"), name
        assert service.get("cap_drop") == ["ALL"], name


def test_scrape_targets_are_compose_services_on_the_right_ports(config, prometheus_targets):
    for job, target in prometheus_targets.items():
        host, port = target.rsplit(":", 1)
        if host == "localhost":
            continue
        assert host in config["services"], f"job {job} scrapes {target}, which is no compose service"
        published = [p.split(":")[-1].split("/")[0] for p in config["services"][host].get("ports", [])]
        assert port in published, f"job {job} scrapes port {port}; service {host} publishes {published}"


def _argv(service: dict) -> list[str]:
    command = list(service["command"])
    return [PROGRAMS.get(command[0], command[0]), *command[1:]]


def _cli(module: str):
    return importlib.import_module(module)


@pytest.mark.parametrize(("service", "source", "job"), [
    ("gpu-exporter", "gpu", "boxwatch-gpu"),
    ("containers-exporter", "containers", "boxwatch-containers"),
    ("journald-exporter", "journald", "boxwatch-journald"),
])
def test_exporter_commands_parse_with_the_cli_and_listen_on_its_default_port(
        config, prometheus_targets, service, source, job):
    argv = _argv(config["services"][service])
    assert argv[:2] == ["boxwatch-exporter", source]
    _cli(f"exporters.{source}")
    cli = _cli("exporters.cli")
    args = cli.build_parser(source).parse_args(argv[1:])
    from boxwatch.web import parse_listen_address

    host, port = parse_listen_address(args.listen_address)
    assert host == "0.0.0.0", f"{service} must listen on all interfaces inside its container"
    assert port == cli.SOURCES[source][1]
    assert prometheus_targets[job] == f"{service}:{port}"


def test_webhook_command_matches_the_alertmanager_receiver(config):
    argv = _argv(config["services"]["webhook"])
    assert argv[:2] == ["boxwatch-stack", "webhook"]
    args = _cli("stack.cli").build_parser().parse_args(argv[1:])
    from boxwatch.web import parse_listen_address

    host, port = parse_listen_address(args.listen_address)
    am = yaml.safe_load((REPO / "alertmanager" / "alertmanager.yml").read_text())
    default = next(r for r in am["receivers"] if r["name"] == am["route"]["receiver"])
    url = urlparse(default["webhook_configs"][0]["url"])
    assert (host, url.hostname, url.port) == ("0.0.0.0", "webhook", port)


def test_detector_command_parses_with_the_cli(config, prometheus_targets):
    argv = _argv(config["services"]["detector"])
    assert argv[:2] == ["boxwatch-detector", "serve"]
    cli = _cli("detector.cli")
    cli.build_parser().parse_args(argv[1:])
    assert prometheus_targets["boxwatch-detector"] == "detector:9875"


@pytest.mark.slow
def test_detector_config_is_mounted_and_valid_with_the_services_environment(config):
    detector = config["services"]["detector"]
    mounts = [v.split(":") for v in detector["volumes"]]
    config_mount = next(m for m in mounts if m[1] == "/etc/boxwatch/detector.yml")
    assert config_mount[0] == str(REPO / "detector" / "boxwatch-detector.example.yml")
    assert config_mount[2] == "ro"
    env = detector["environment"]
    assert env["BOXWATCH_READER__URL"] == "http://prometheus:9090"
    assert env["BOXWATCH_STATE_DIR"].startswith("/var/lib/boxwatch/")  # in the detector-state volume
    _cli("detector.cli")
    environ = {k: v for k, v in os.environ.items() if not k.startswith("BOXWATCH_")}
    result = subprocess.run(
        [sys.executable, "-m", "detector", "validate-config", "--config", config_mount[0]],
        env={**environ, **env}, capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_mounts_its_config_and_the_rule_files_it_loads(config):
    volumes = dict(v.split(":")[1::-1] for v in config["services"]["prometheus"]["volumes"])
    assert volumes["/etc/prometheus/prometheus.yml"] == str(REPO / "prometheus" / "prometheus.yml")
    assert volumes["/etc/prometheus/rules"] == str(REPO / "prometheus" / "rules")
    prom = yaml.safe_load((REPO / "prometheus" / "prometheus.yml").read_text())
    assert all(f.startswith("/etc/prometheus/rules/") for f in prom["rule_files"])
    assert volumes["/prometheus"] == "prometheus-data"


def test_state_lives_in_named_volumes(config):
    declared = set(config["volumes"])
    expected = {"prometheus": "/prometheus", "alertmanager": "/alertmanager", "grafana": "/var/lib/grafana",
                "mlflow": "/var/lib/boxwatch", "journald-exporter": "/var/lib/boxwatch",
                "detector": "/var/lib/boxwatch"}
    for service, target in expected.items():
        sources = {v.split(":")[1]: v.split(":")[0] for v in config["services"][service]["volumes"]}
        assert sources.get(target) in declared, f"{service}: {target} is not a named volume"


def test_host_sources_are_mounted_read_only(config):
    containers = config["services"]["containers-exporter"]["volumes"]
    assert "/var/run/docker.sock:/var/run/docker.sock:ro" in containers
    journald = config["services"]["journald-exporter"]["volumes"]
    for path in ("/var/log/journal", "/run/log/journal", "/etc/machine-id"):
        assert f"{path}:{path}:ro" in journald


def test_node_exporter_runs_the_stacks_collectors_on_the_hosts_root(config):
    from stack.runtime import node_exporter_flags

    node = config["services"]["node-exporter"]
    assert [a for a in node["command"] if a.startswith("--collector.")] == node_exporter_flags()
    assert "--path.rootfs=/host" in node["command"]
    assert "/:/host:ro,rslave" in node["volumes"]
    assert node["pid"] == "host"


def test_gpu_exporter_sees_host_pids_and_names_their_containers(config):
    gpu = config["services"]["gpu-exporter"]
    assert gpu["pid"] == "host"
    assert "/var/run/docker.sock:/var/run/docker.sock:ro" in gpu["volumes"]


def test_gpu_exporter_reserves_gpus_through_the_nvidia_runtime(config):
    devices = config["services"]["gpu-exporter"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia"
    assert {"gpu", "utility"} <= set(devices[0]["capabilities"])


def test_mlflow_is_the_detectors_registry_and_accepts_its_host_name(config):
    mlflow = config["services"]["mlflow"]
    allowed = next(a for a in mlflow["command"] if a.startswith("--allowed-hosts="))
    assert "mlflow:5000" in allowed.split("=", 1)[1].split(",")
    detector_env = config["services"]["detector"]["environment"]
    assert detector_env["BOXWATCH_REGISTRY__TRACKING_URI"] == "http://mlflow:5000"
    assert detector_env["BOXWATCH_REGISTRY__ENABLED"] == "true"


def _networks(service: dict) -> set[str]:
    networks = service.get("networks") or {"default": None}
    return set(networks)


def test_mlflow_is_reachable_only_by_the_detector(config):
    """MLflow has no authentication: an internal network with the detector alone, and no published port."""
    mlflow = config["services"]["mlflow"]
    assert "ports" not in mlflow
    assert _networks(mlflow) == {"registry"} and config["networks"]["registry"]["internal"] is True
    members = {name for name, service in config["services"].items() if "registry" in _networks(service)}
    assert members == {"mlflow", "detector"}


def test_the_mlflow_ui_override_publishes_on_loopback_only():
    override = REPO / "docker-compose.mlflow-ui.yml"
    result = _compose("-f", str(override), "config", env={"BOXWATCH_GRAFANA_ADMIN_PASSWORD": "s3cret"})
    assert result.returncode == 0, result.stderr
    ports = yaml.safe_load(result.stdout)["services"]["mlflow"]["ports"]
    assert ports == ["127.0.0.1:5000:5000/tcp"]


def test_grafana_is_provisioned_with_anonymous_viewers(config):
    grafana = config["services"]["grafana"]
    env = grafana["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert env["GF_SECURITY_ADMIN_PASSWORD"] == "s3cret"
    volumes = {v.split(":")[1]: v.split(":")[0] for v in grafana["volumes"]}
    assert volumes["/etc/grafana/provisioning"] == str(REPO / "grafana" / "provisioning")
    # Every dashboard provider reads a directory that holds the dashboards' JSON.
    providers = sorted((REPO / "grafana" / "provisioning" / "dashboards").glob("*.y*ml"))
    assert providers, "grafana/provisioning/dashboards/ has no provider file"
    for path in [p["options"]["path"] for f in providers for p in yaml.safe_load(f.read_text())["providers"]]:
        assert volumes.get(path) == str(REPO / "grafana" / "dashboards"), f"provider path {path} is not mounted"
    assert list((REPO / "grafana" / "dashboards").glob("*.json"))
    # ... and every datasource URL is a compose service
    for f in sorted((REPO / "grafana" / "provisioning" / "datasources").glob("*.y*ml")):
        for source in yaml.safe_load(f.read_text())["datasources"]:
            url = urlparse(source["url"])
            assert url.hostname in config["services"], f"{f.name}: {source['url']} is no compose service"
