"""deploy/kubernetes/, validated offline: core objects through the official kubernetes client's
models, the Prometheus Operator's custom resources against their documented fields, the generated
files against their sources, and the wiring (selectors, ports, job names, shards) between them."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.harness import REPO, require_binary

K8S = REPO / "deploy" / "kubernetes"
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
MODELS = {  # kind -> kubernetes.client model
    "Namespace": "V1Namespace",
    "ConfigMap": "V1ConfigMap",
    "DaemonSet": "V1DaemonSet",
    "StatefulSet": "V1StatefulSet",
    "Deployment": "V1Deployment",
    "Service": "V1Service",
    "PersistentVolumeClaim": "V1PersistentVolumeClaim",
    "NetworkPolicy": "V1NetworkPolicy",
}
JOB_PORTS = {"boxwatch-gpu": 9872, "boxwatch-containers": 9873, "boxwatch-journald": 9874, "boxwatch-detector": 9875,
             "boxwatch-node": 9100}
UID = 10001


def _load_all() -> list[dict]:
    docs = []
    for path in MANIFESTS:
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


@pytest.fixture(scope="module")
def objects() -> list[dict]:
    return _load_all()


def _one(objects: list[dict], kind: str, name: str) -> dict:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def _pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


# --------------------------------------------------------------------------- generated files


def test_generated_manifests_are_up_to_date():
    result = subprocess.run([sys.executable, str(K8S / "generate.py"), "--check"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_prometheus_rule_holds_exactly_the_rule_files_groups(objects):
    rule = _one(objects, "PrometheusRule", "boxwatch")
    expected = []
    for path in sorted((REPO / "prometheus" / "rules").glob("*.yml")):
        expected.extend(yaml.safe_load(path.read_text())["groups"])
    assert rule["spec"]["groups"] == expected


def test_prometheus_rule_groups_pass_promtool(objects, tmp_path):
    promtool = require_binary("promtool")
    rule = _one(objects, "PrometheusRule", "boxwatch")
    assert rule["spec"]["groups"], "the PrometheusRule holds no rule groups"
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_detector_configmap_carries_the_config_file(objects):
    configmap = _one(objects, "ConfigMap", "boxwatch-detector-config")
    assert configmap["data"]["detector.yml"] == (REPO / "detector" / "boxwatch-detector.example.yml").read_text()


def test_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(p.name for p in MANIFESTS)


# --------------------------------------------------------------------------- core objects


def _round_trip(obj: dict) -> dict:
    from kubernetes.client import ApiClient

    client = ApiClient()
    model = client._ApiClient__deserialize(obj, MODELS[obj["kind"]])  # the client's own deserializer
    return client.sanitize_for_serialization(model)


@pytest.mark.parametrize("obj", [o for o in _load_all() if o["kind"] in MODELS],
                         ids=lambda o: f"{o['kind']}/{o['metadata']['name']}")
def test_core_object_round_trips_through_the_kubernetes_models(obj):
    """Deserializing drops every field the API does not know: a typo shows up as a difference."""
    assert _round_trip(obj) == obj


def test_round_trip_catches_a_misspelled_field(objects):
    daemonset = _one(objects, "DaemonSet", "boxwatch-gpu")
    broken = yaml.safe_load(yaml.safe_dump(daemonset))
    broken["spec"]["template"]["spec"]["containers"][0]["volumeMount"] = []
    assert _round_trip(broken) != broken


def test_every_object_is_in_the_boxwatch_namespace(objects):
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "boxwatch", obj["metadata"]["name"]


def test_workload_selectors_match_their_pod_templates(objects):
    for obj in objects:
        if obj["kind"] in ("DaemonSet", "StatefulSet", "Deployment"):
            labels = obj["spec"]["template"]["metadata"]["labels"]
            assert obj["spec"]["selector"]["matchLabels"].items() <= labels.items(), obj["metadata"]["name"]


def test_services_are_the_prometheus_jobs_and_reach_pods_on_the_cli_ports(objects):
    prom = yaml.safe_load((REPO / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"] for job in prom["scrape_configs"]} & set(JOB_PORTS)
    assert jobs == set(JOB_PORTS)
    workloads = [o for o in objects if o["kind"] in ("DaemonSet", "StatefulSet")]
    for job, port in JOB_PORTS.items():
        service = _one(objects, "Service", job)
        assert service["spec"]["ports"][0]["port"] == port
        selected = [w for w in workloads
                    if service["spec"]["selector"].items() <= w["spec"]["template"]["metadata"]["labels"].items()]
        assert len(selected) == 1, f"Service {job} selects {len(selected)} workloads"
        container = _pod_spec(selected[0])["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports[service["spec"]["ports"][0]["targetPort"]] == port
        assert f"--web.listen-address=:{port}" in container["args"]


def test_pods_run_as_the_images_non_root_user(objects):
    for obj in objects:
        if obj["kind"] not in ("DaemonSet", "StatefulSet", "Deployment"):
            continue
        spec = _pod_spec(obj)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == UID
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["readOnlyRootFilesystem"] is True
            assert context["capabilities"]["drop"] == ["ALL"]


def test_gpu_exporter_uses_the_nvidia_runtime_without_taking_a_gpu(objects):
    spec = _pod_spec(_one(objects, "DaemonSet", "boxwatch-gpu"))
    assert spec["runtimeClassName"] == "nvidia"
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    container = spec["containers"][0]
    assert "nvidia.com/gpu" not in container["resources"].get("limits", {})
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["NVIDIA_DRIVER_CAPABILITIES"] == "utility"


def _host_mounts(spec: dict, container: dict) -> dict[str, tuple[str, bool]]:
    """mountPath -> (host path, read-only) for the container's hostPath volumes."""
    host_paths = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    return {m["mountPath"]: (host_paths[m["name"]], m.get("readOnly", False))
            for m in container["volumeMounts"] if m["name"] in host_paths}


def test_host_sources_are_mounted_read_only(objects):
    containers = _pod_spec(_one(objects, "DaemonSet", "boxwatch-containers"))
    assert _host_mounts(containers, containers["containers"][0]) == {
        "/var/run/docker.sock": ("/var/run/docker.sock", True)}
    journald = _pod_spec(_one(objects, "DaemonSet", "boxwatch-journald"))
    mounts = _host_mounts(journald, journald["containers"][0])
    for path in ("/var/log/journal", "/run/log/journal", "/etc/machine-id"):
        assert mounts[path] == (path, True)
    node = _pod_spec(_one(objects, "DaemonSet", "boxwatch-node"))
    assert _host_mounts(node, node["containers"][0]) == {"/host": ("/", True)}


def test_node_exporter_runs_the_stacks_collectors_on_the_hosts_root(objects):
    from stack.runtime import node_exporter_flags

    spec = _pod_spec(_one(objects, "DaemonSet", "boxwatch-node"))
    args = spec["containers"][0]["args"]
    assert [a for a in args if a.startswith("--collector.")] == node_exporter_flags()
    assert "--path.rootfs=/host" in args
    assert spec["hostPID"] is True and not spec.get("hostNetwork")
    assert _pod_spec(_one(objects, "DaemonSet", "boxwatch-gpu"))["hostPID"] is True


def test_detector_shards_follow_the_replica_count(objects, tmp_path):
    statefulset = _one(objects, "StatefulSet", "boxwatch-detector")
    container = _pod_spec(statefulset)["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert int(env["BOXWATCH_SHARD_COUNT"]["value"]) == statefulset["spec"]["replicas"]
    assert env["BOXWATCH_STATE_DIR"]["value"].startswith(
        next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == "state"))
    assert env["BOXWATCH_SHARD_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.labels['apps.kubernetes.io/pod-index']"
    assert statefulset["spec"]["serviceName"] == "boxwatch-detector"
    # What the entrypoint makes of these args in the last pod, with and without the pod-index label.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "boxwatch-detector").write_text('#!/bin/sh\necho boxwatch-detector "$@"\n')
    (bindir / "boxwatch-detector").chmod(0o755)
    last = statefulset["spec"]["replicas"] - 1
    for index in (str(last), ""):
        result = subprocess.run(
            ["sh", str(REPO / "deploy" / "docker" / "entrypoint.sh"), *container["args"]],
            env={"PATH": f"{bindir}:/usr/bin:/bin", "HOSTNAME": f"boxwatch-detector-{last}",
                 "BOXWATCH_SHARD_INDEX": index, "BOXWATCH_SHARD_COUNT": env["BOXWATCH_SHARD_COUNT"]["value"]},
            capture_output=True, text=True, timeout=30,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.split()[-2:] == ["--shard", f"{last}/{statefulset['spec']['replicas']}"]


@pytest.mark.slow
def test_detector_config_is_valid_with_the_statefulsets_environment(objects):
    """The real `validate-config` on the ConfigMap's file, with the pod's overrides."""
    cli = importlib.import_module("detector.cli")
    del cli
    container = _pod_spec(_one(objects, "StatefulSet", "boxwatch-detector"))["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    configmap = _one(objects, "ConfigMap", "boxwatch-detector-config")
    _validate_detector_config(configmap["data"]["detector.yml"], env)


def _validate_detector_config(text: str, env: dict[str, str]) -> None:
    import os
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".yml") as f:
        f.write(text)
        f.flush()
        environ = {k: v for k, v in os.environ.items() if not k.startswith("BOXWATCH_")}
        result = subprocess.run([sys.executable, "-m", "detector", "validate-config", "--config", f.name],
                                env={**environ, **env}, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr


def test_only_detector_pods_reach_mlflow(objects):
    """MLflow has no authentication: its pods admit connections from the detector pods alone."""
    policy = _one(objects, "NetworkPolicy", "boxwatch-mlflow")["spec"]
    mlflow = _one(objects, "Deployment", "boxwatch-mlflow")
    detector = _one(objects, "StatefulSet", "boxwatch-detector")
    assert policy["podSelector"]["matchLabels"].items() <= mlflow["spec"]["template"]["metadata"]["labels"].items()
    assert policy["policyTypes"] == ["Ingress"]
    [rule] = policy["ingress"]
    [source] = rule["from"]
    assert set(source) == {"podSelector"}  # no namespaceSelector or ipBlock: not other namespaces, not the node
    assert source["podSelector"]["matchLabels"].items() <= detector["spec"]["template"]["metadata"]["labels"].items()
    for obj in objects:  # and no other pod carries those labels
        if obj["kind"] in ("DaemonSet", "StatefulSet", "Deployment") and obj is not detector:
            labels = obj["spec"]["template"]["metadata"]["labels"]
            assert not source["podSelector"]["matchLabels"].items() <= labels.items(), obj["metadata"]["name"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 5000}]


def test_detector_mounts_the_config_its_args_name(objects):
    spec = _pod_spec(_one(objects, "StatefulSet", "boxwatch-detector"))
    container = spec["containers"][0]
    config_volume = next(v for v in spec["volumes"] if v["name"] == "config")
    assert config_volume["configMap"]["name"] == "boxwatch-detector-config"
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    assert f"--config={mount['mountPath']}/detector.yml" in container["args"]


# --------------------------------------------------------------------------- custom resources
# The fields of monitoring.coreos.com/v1 ServiceMonitor and PrometheusRule, from the Prometheus
# Operator's API reference (Documentation/api-reference/api.md, "ServiceMonitorSpec", "Endpoint",
# "RelabelConfig", "NamespaceSelector", "PrometheusRuleSpec", "RuleGroup", "Rule").

DURATION = re.compile(r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$")
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
SERVICE_MONITOR_SPEC = {
    "jobLabel", "targetLabels", "podTargetLabels", "endpoints", "selector", "selectorMechanism",
    "namespaceSelector", "sampleLimit", "scrapeProtocols", "fallbackScrapeProtocol", "targetLimit",
    "labelLimit", "labelNameLengthLimit", "labelValueLengthLimit", "nativeHistogramBucketLimit",
    "nativeHistogramMinBucketFactor", "scrapeClassicHistograms", "convertClassicHistogramsToNHCB",
    "keepDroppedTargets", "attachMetadata", "scrapeClass", "bodySizeLimit",
}
ENDPOINT = {
    "port", "targetPort", "path", "scheme", "params", "interval", "scrapeTimeout", "tlsConfig",
    "bearerTokenFile", "bearerTokenSecret", "authorization", "honorLabels", "honorTimestamps",
    "trackTimestampsStaleness", "basicAuth", "oauth2", "metricRelabelings", "relabelings", "proxyUrl",
    "noProxy", "proxyFromEnvironment", "proxyConnectHeader", "followRedirects", "enableHttp2", "filterRunning",
}
RELABEL_CONFIG = {"sourceLabels", "separator", "targetLabel", "regex", "modulus", "replacement", "action"}
RELABEL_ACTIONS = {"replace", "keep", "drop", "hashmod", "labelmap", "labeldrop", "labelkeep", "lowercase",
                   "uppercase", "keepequal", "dropequal"}
NAMESPACE_SELECTOR = {"any", "matchNames"}
LABEL_SELECTOR = {"matchLabels", "matchExpressions"}
RULE_GROUP = {"name", "labels", "interval", "query_offset", "rules", "partial_response_strategy", "limit"}
RULE = {"record", "alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
METADATA = {"name", "namespace", "labels", "annotations"}


def _keys(where: str, value: dict, allowed: set[str], required: set[str] = frozenset()) -> list[str]:
    errors = [f"{where}: unknown field {key!r}" for key in value if key not in allowed]
    errors += [f"{where}: missing required field {key!r}" for key in required if key not in value]
    return errors


def service_monitor_errors(obj: dict) -> list[str]:
    errors = _keys("", obj, {"apiVersion", "kind", "metadata", "spec"}, {"apiVersion", "kind", "metadata", "spec"})
    errors += _keys("metadata", obj["metadata"], METADATA, {"name"})
    spec = obj["spec"]
    errors += _keys("spec", spec, SERVICE_MONITOR_SPEC, {"selector"})
    errors += _keys("spec.selector", spec["selector"], LABEL_SELECTOR)
    errors += _keys("spec.namespaceSelector", spec.get("namespaceSelector", {}), NAMESPACE_SELECTOR)
    for i, endpoint in enumerate(spec.get("endpoints", [])):
        where = f"spec.endpoints[{i}]"
        errors += _keys(where, endpoint, ENDPOINT)
        if "port" in endpoint and "targetPort" in endpoint:
            errors.append(f"{where}: port and targetPort are mutually exclusive")
        for key in ("interval", "scrapeTimeout"):
            if key in endpoint and not DURATION.match(endpoint[key]):
                errors.append(f"{where}.{key}: {endpoint[key]!r} is not a Prometheus duration")
        for kind in ("relabelings", "metricRelabelings"):
            for j, relabel in enumerate(endpoint.get(kind, [])):
                errors += _keys(f"{where}.{kind}[{j}]", relabel, RELABEL_CONFIG)
                if relabel.get("action", "replace").lower() not in RELABEL_ACTIONS:
                    errors.append(f"{where}.{kind}[{j}].action: {relabel['action']!r} is not a relabel action")
                errors += [f"{where}.{kind}[{j}].sourceLabels: {name!r} is not a label name"
                           for name in relabel.get("sourceLabels", []) if not LABEL_NAME.match(name)]
    return errors


def prometheus_rule_errors(obj: dict) -> list[str]:
    errors = _keys("", obj, {"apiVersion", "kind", "metadata", "spec"}, {"apiVersion", "kind", "metadata", "spec"})
    errors += _keys("metadata", obj["metadata"], METADATA, {"name"})
    errors += _keys("spec", obj["spec"], {"groups"})
    names = [g.get("name") for g in obj["spec"].get("groups", [])]
    errors += [f"spec.groups: group name {n!r} is not unique" for n in set(names) if names.count(n) > 1]
    for i, group in enumerate(obj["spec"].get("groups", [])):
        where = f"spec.groups[{i}]"
        errors += _keys(where, group, RULE_GROUP, {"name"})
        for j, rule in enumerate(group.get("rules", [])):
            rule_where = f"{where}.rules[{j}]"
            errors += _keys(rule_where, rule, RULE, {"expr"})
            if ("record" in rule) == ("alert" in rule):
                errors.append(f"{rule_where}: exactly one of record and alert")
            if "record" in rule and ({"for", "keep_firing_for", "annotations"} & rule.keys()):
                errors.append(f"{rule_where}: a recording rule takes no for/keep_firing_for/annotations")
            for key in ("for", "keep_firing_for"):
                if key in rule and not DURATION.match(str(rule[key])):
                    errors.append(f"{rule_where}.{key}: {rule[key]!r} is not a Prometheus duration")
    return errors


def test_service_monitors_have_only_documented_fields(objects):
    monitors = [o for o in objects if o["kind"] == "ServiceMonitor"]
    assert {m["metadata"]["name"] for m in monitors} == {"boxwatch-exporters", "boxwatch-detector"}
    for monitor in monitors:
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        assert service_monitor_errors(monitor) == []
        assert monitor["spec"]["endpoints"], "a ServiceMonitor without endpoints scrapes nothing"


def test_prometheus_rule_has_only_documented_fields(objects):
    rule = _one(objects, "PrometheusRule", "boxwatch")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert prometheus_rule_errors(rule) == []


def test_schema_checks_catch_mistakes():
    monitor = {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor", "metadata": {"name": "m"},
               "spec": {"selector": {}, "endpoints": [{"port": "metrics", "interval": "15 s", "honorlabels": True,
                                                      "relabelings": [{"action": "rename"}]}]}}
    assert service_monitor_errors(monitor) == [
        "spec.endpoints[0]: unknown field 'honorlabels'",
        "spec.endpoints[0].interval: '15 s' is not a Prometheus duration",
        "spec.endpoints[0].relabelings[0].action: 'rename' is not a relabel action",
    ]
    rule = {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule", "metadata": {"name": "r"},
            "spec": {"groups": [{"name": "g", "rules": [{"record": "a:b:c", "alert": "X", "expr": "1"}]}]}}
    assert prometheus_rule_errors(rule) == ["spec.groups[0].rules[0]: exactly one of record and alert"]


def test_service_monitors_select_the_boxwatch_services(objects):
    services = [o for o in objects if o["kind"] == "Service"]
    scraped: dict[str, bool] = {}
    for monitor in (o for o in objects if o["kind"] == "ServiceMonitor"):
        for service in services:
            if monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items():
                port_names = {p["name"] for p in service["spec"]["ports"]}
                assert {e["port"] for e in monitor["spec"]["endpoints"]} <= port_names
                scraped[service["metadata"]["name"]] = monitor["spec"]["endpoints"][0].get("honorLabels", False)
    # every job scraped once; the detector's scores keep their own labels, as in prometheus.yml
    assert scraped == {"boxwatch-gpu": False, "boxwatch-containers": False, "boxwatch-journald": False,
                       "boxwatch-node": False, "boxwatch-detector": True}


def test_generator_refuses_duplicate_group_names(tmp_path):
    sys.path.insert(0, str(K8S))
    try:
        import generate
    finally:
        sys.path.remove(str(K8S))
    (tmp_path / "a.yml").write_text("groups:\n  - name: same\n    rules: []\n")
    (tmp_path / "b.yml").write_text("groups:\n  - name: same\n    rules: []\n")
    with pytest.raises(ValueError, match="group 'same' is also defined in"):
        generate.rule_groups(Path(tmp_path))


@pytest.mark.parametrize(("daemonset", "source"), [
    ("boxwatch-gpu", "gpu"), ("boxwatch-containers", "containers"), ("boxwatch-journald", "journald")])
def test_exporter_args_parse_with_the_cli(objects, daemonset, source):
    importlib.import_module(f"exporters.{source}")
    from exporters import cli

    args = _pod_spec(_one(objects, "DaemonSet", daemonset))["containers"][0]["args"]
    assert args[:2] == ["exporter", source]
    parsed = cli.build_parser(source).parse_args(args[1:])
    assert parsed.listen_address == f":{cli.SOURCES[source][1]}"


def test_detector_args_parse_with_the_cli(objects):
    cli = importlib.import_module("detector.cli")
    args = _pod_spec(_one(objects, "StatefulSet", "boxwatch-detector"))["containers"][0]["args"]
    assert args[:2] == ["detector", "serve"]
    parsed = cli.build_parser().parse_args([*args[1:], "--shard", "1/2"])  # the entrypoint adds --shard
    assert parsed.listen_address == ":9875"
    assert parsed.shard == (1, 2)
