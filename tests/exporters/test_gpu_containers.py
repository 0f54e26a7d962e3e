"""GPU memory per container: a GPU process's cgroup names its container, the Docker API its name.

The cgroup formats of each runtime are checked on /proc files as the runtimes write them; the
rest runs against the private ``dockerd`` of test_containers: a real container's process,
reported by the stand-in NVML as a compute process, comes out labelled with the container's
name and compose service, and joins with the containers exporter's series in a real Prometheus.
"""

from __future__ import annotations

import pytest

from exporters.cgroups import ContainerRef, container_of_pid
from tests.exporters.test_containers import Exporter as ContainersExporter
from tests.exporters.test_containers import client, engine, run  # noqa: F401 - pytest fixtures
from tests.exporters.test_gpu import GPU0, fake_lib, series, start_exporter, value, wait_until  # noqa: F401
from tests.harness import REPO

ID = "3f9c1be0a7d24e1c9b8f6a5d4c3b2a1908f7e6d5c4b3a29180f7e6d5c4b3a291"
OUTER = "aa" * 32
GIB = 1 << 30

CGROUP_FILES = {
    "host process": ("0::/user.slice/user-1000.slice/session-3.scope\n", None),
    "docker, cgroup v1, cgroupfs driver": (
        f"12:memory:/docker/{ID}\n11:pids:/docker/{ID}\n0::/docker/{ID}\n", ContainerRef("docker", ID)),
    "docker, cgroup v2, systemd driver": (f"0::/system.slice/docker-{ID}.scope\n", ContainerRef("docker", ID)),
    "docker, cgroup v1 only, systemd driver": (
        f"10:cpu,cpuacct:/system.slice/docker-{ID}.scope\n1:name=systemd:/system.slice/docker-{ID}.scope\n",
        ContainerRef("docker", ID)),
    "docker seen from a private cgroup namespace": (
        f"0::/../../system.slice/docker-{ID}.scope\n", ContainerRef("docker", ID)),
    "containerd (Kubernetes), systemd driver": (
        "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1a2b3c4d_5e6f.slice/"
        f"cri-containerd-{ID}.scope\n", ContainerRef("containerd", ID)),
    "containerd (Kubernetes), cgroupfs driver": (
        f"4:memory:/kubepods/besteffort/pod1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d/{ID}\n",
        ContainerRef("containerd", ID)),
    "CRI-O": (f"0::/kubepods.slice/kubepods-pod1a2b.slice/crio-{ID}.scope\n", ContainerRef("cri-o", ID)),
    "podman, cgroup v2": (
        f"0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container\n",
        ContainerRef("podman", ID)),
    "podman, cgroup v1": (f"3:memory:/libpod_parent/libpod-{ID}\n", ContainerRef("podman", ID)),
    "docker in docker: the inner container": (f"0::/docker/{OUTER}/docker/{ID}\n", ContainerRef("docker", ID)),
}


@pytest.mark.parametrize("case", CGROUP_FILES, ids=str)
def test_container_is_found_in_each_runtimes_cgroup_path(tmp_path, case):
    text, expected = CGROUP_FILES[case]
    (tmp_path / "4242").mkdir()
    (tmp_path / "4242" / "cgroup").write_text(text)
    assert container_of_pid(tmp_path, 4242) == expected


def test_a_pid_that_is_gone_is_no_container(tmp_path):
    assert container_of_pid(tmp_path, 4242) is None


# --------------------------------------------------------------------------- real dockerd


@pytest.fixture(scope="module")
def llm(engine, client):  # noqa: F811 - the fixtures imported above
    """A running container of a compose service "ollama"; its main process stands for a GPU user."""
    container = run(client, "llm-server", ["sleep", "600"], labels={"com.docker.compose.service": "ollama"})
    container.reload()
    yield container, container.attrs["State"]["Pid"]
    container.remove(force=True)


def _container_series(text: str) -> dict[tuple[str, str, str], float]:
    return {(s["process"], s["container"], s["compose_service"]):
            value(text, "boxwatch_gpu_process_memory_used_bytes", **s)
            for s in series(text, "boxwatch_gpu_process_memory_used_bytes") if s["gpu"] == "0"}


@pytest.mark.slow
@pytest.mark.docker
def test_gpu_process_in_a_container_carries_the_containers_name(engine, llm, start_exporter):  # noqa: F811
    container, pid = llm
    exporter = start_exporter("--gpu.poll-interval=0.2", f"--docker.host={engine.url}", procs=f"0:{pid}:{3 * GIB}")
    text = wait_until(exporter, lambda t: ("sleep", "llm-server", "ollama") in _container_series(t))
    assert _container_series(text) == {("sleep", "llm-server", "ollama"): 3 * GIB}


@pytest.mark.slow
@pytest.mark.docker
def test_without_the_docker_api_the_container_is_named_by_its_short_id(llm, start_exporter, tmp_path):  # noqa: F811
    container, pid = llm
    exporter = start_exporter("--gpu.poll-interval=0.2", f"--docker.host=unix://{tmp_path}/no.sock",
                              procs=f"0:{pid}:{GIB}")
    text = wait_until(exporter, lambda t: _container_series(t))
    assert _container_series(text) == {("sleep", container.id[:12], ""): GIB}
    assert "cannot name a GPU process's container" in exporter.log()


@pytest.mark.docker
@pytest.mark.slow
def test_container_gpu_memory_joins_its_container_metrics_in_prometheus(
        engine, llm, start_exporter, start_prometheus, tmp_path):  # noqa: F811
    """The GPU exporter and the containers exporter, scraped by a Prometheus with the shipped
    recording rules: a container's GPU memory is one PromQL join away from its other series."""
    container, pid = llm
    gpu = start_exporter("--gpu.poll-interval=0.2", f"--docker.host={engine.url}", procs=f"0:{pid}:{3 * GIB}")
    containers = ContainersExporter(engine, tmp_path, "--docker.poll-interval=0.5")
    try:
        prom = start_prometheus(
            config={"global": {"scrape_interval": "1s", "evaluation_interval": "1s"}, "scrape_configs": [
                {"job_name": "boxwatch-gpu", "static_configs": [{"targets": [f"127.0.0.1:{gpu.port}"]}]},
                {"job_name": "boxwatch-containers",
                 "static_configs": [{"targets": [f"127.0.0.1:{containers.port}"]}]}]},
            rule_files=[REPO / "prometheus" / "rules" / "recording.yml"])
        joined = prom.wait_for(
            'container:boxwatch_gpu_process_memory_used_bytes:sum * on (name) group_left (image, id) '
            'boxwatch_container_info', timeout=60)
        assert len(joined) == 1
        labels = joined[0]["metric"]
        assert (labels["name"], labels["compose_service"], labels["id"]) == ("llm-server", "ollama", container.id[:12])
        assert float(joined[0]["value"][1]) == 3 * GIB
        # GPU memory beside the container's own memory, per container.
        both = prom.wait_for(
            'container:boxwatch_gpu_process_memory_used_bytes:sum '
            '+ on (name) group_left boxwatch_container_memory_usage_bytes', timeout=30)
        assert [r["metric"]["name"] for r in both] == ["llm-server"]
        assert float(both[0]["value"][1]) > 3 * GIB
    finally:
        containers.stop()
