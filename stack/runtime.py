"""The native stack's runtime: which processes, on which ports, with which generated configs.

The project's ``prometheus/prometheus.yml`` and ``alertmanager/alertmanager.yml`` are written for
docker-compose (targets are service names). Here they are read and rewritten for localhost into
the state directory; the job names and receivers are the contract between the two.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from boxwatch.jobs import JOBS
from stack.supervisor import Child

DEFAULT_PORTS = {
    "prometheus": 9090,
    "alertmanager": 9093,
    "webhook": 9876,
    "gpu": 9872,
    "containers": 9873,
    "journald": 9874,
    "detector": 9875,
    "demo": 9877,
    # Not node_exporter's usual 9100: Debian's package starts its own service there.
    "node": 9878,
}
# Start order; the supervisor stops in reverse.
COMPONENTS = ["prometheus", "alertmanager", "webhook", "node", "gpu", "containers", "journald", "detector"]
# With --demo, a seeded scenario stands in for the exporters (stack/demo/).
DEMO_COMPONENTS = ["prometheus", "alertmanager", "webhook", "demo", "detector"]
# node_exporter's collectors for a GPU box: sensors (hwmon, thermal_zone), pressure stall
# information, filesystems, memory, CPU, boot time (stat); the defaults that only add series
# here (arp, bonding, nfs, ipvs, zfs, ...) stay off. docker-compose.yml and
# deploy/kubernetes/exporters.yaml pass the same list (tests/host checks it).
NODE_EXPORTER_COLLECTORS = ["cpu", "cpufreq", "diskstats", "edac", "filesystem", "hwmon", "loadavg", "meminfo",
                            "netdev", "pressure", "stat", "thermal_zone", "time", "uname", "vmstat"]


def node_exporter_flags() -> list[str]:
    return ["--collector.disable-defaults", *(f"--collector.{name}" for name in NODE_EXPORTER_COLLECTORS)]



class StackError(Exception):
    """A problem that stops the stack from starting, with what to do about it."""


@dataclass
class Layout:
    """Where the stack reads the project's configs and writes its state."""

    config_dir: Path  # the project checkout: prometheus/, alertmanager/, detector/...
    state_dir: Path
    host: str = "127.0.0.1"
    demo_end: float | None = None  # set in demo mode: the scenario's "now" (see prepare_demo)

    @property
    def prometheus_data(self) -> Path:
        """Demo data lives apart from real data, so a demo never pollutes a real history."""
        return self.state_dir / "prometheus" / ("data-demo" if self.demo_end else "data")

    @property
    def detector_state(self) -> Path:
        return self.state_dir / ("detector-demo" if self.demo_end else "detector")

    def url(self, component: str, ports: dict[str, int]) -> str:
        return f"http://{self.host}:{ports[component]}"


def default_config_dir() -> Path:
    """The checkout this package runs from, when it has the project's configs; else the cwd."""
    here = Path(__file__).resolve().parents[1]
    return here if (here / "prometheus" / "prometheus.yml").exists() else Path.cwd()


def find_binary(*names: str, package: str = "prometheus prometheus-alertmanager", hint: str = "") -> str:
    for name in names:
        path = shutil.which(name) or next(
            (str(p) for p in (Path("/usr/bin") / name, Path("/usr/sbin") / name) if p.exists()), None
        )
        if path:
            return path
    raise StackError(
        f"none of {', '.join(names)} found on PATH or in /usr/bin; on Debian/Ubuntu install them with "
        f"`sudo apt-get install --no-install-recommends {package}` (or run scripts/setup.sh){hint}"
    )


def render_prometheus_config(layout: Layout, ports: dict[str, int], enabled: list[str]) -> Path:
    """Write ``<state>/prometheus/prometheus.yml``: local targets, local rules, local Alertmanager."""
    source = layout.config_dir / "prometheus" / "prometheus.yml"
    try:
        config = yaml.safe_load(source.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise StackError(f"{source}: cannot read the Prometheus config: {err}") from err
    out_dir = layout.state_dir / "prometheus"
    rules_dir = out_dir / "rules"
    if rules_dir.exists():
        shutil.rmtree(rules_dir)
    rules_dir.mkdir(parents=True)
    for rule_file in sorted((layout.config_dir / "prometheus" / "rules").glob("*.yml")):
        shutil.copy(rule_file, rules_dir / rule_file.name)
    config["rule_files"] = [str(rules_dir / "*.yml")]
    if "alertmanager" in enabled:
        config["alerting"] = {
            "alertmanagers": [{"static_configs": [{"targets": [f"{layout.host}:{ports['alertmanager']}"]}]}]
        }
    else:
        config.pop("alerting", None)
    jobs = {job: component for component, job in JOBS.items()}
    scrape_configs = []
    for scrape in config.get("scrape_configs", []):
        component = jobs.get(scrape.get("job_name"))
        if component is None:  # a job the user added: keep it as it is
            scrape_configs.append(scrape)
        elif component in enabled:
            scrape["static_configs"] = [{"targets": [f"{layout.host}:{ports[component]}"]}]
            scrape_configs.append(scrape)
    if "demo" in enabled:
        scrape_configs.append({
            "job_name": JOBS["demo"],
            "honor_labels": True,  # the scenario's series carry instance="demo-box"
            "static_configs": [{"targets": [f"{layout.host}:{ports['demo']}"]}],
        })
    config["scrape_configs"] = scrape_configs
    path = out_dir / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def render_alertmanager_config(layout: Layout, ports: dict[str, int]) -> Path:
    """Write ``<state>/alertmanager/alertmanager.yml`` with webhook URLs aimed at the local sink."""
    source = layout.config_dir / "alertmanager" / "alertmanager.yml"
    try:
        config = yaml.safe_load(source.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise StackError(f"{source}: cannot read the Alertmanager config: {err}") from err
    sink = f"http://{layout.host}:{ports['webhook']}/alert"
    for receiver in config.get("receivers", []):
        for webhook in receiver.get("webhook_configs", []):
            if "//webhook:" in webhook.get("url", ""):
                webhook["url"] = sink
    out_dir = layout.state_dir / "alertmanager"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def build_children(layout: Layout, ports: dict[str, int], enabled: list[str],
                   detector_config: Path | None = None) -> list[Child]:
    """The supervised processes, in start order, for the ``enabled`` components."""
    host = layout.host
    state = layout.state_dir
    python = [sys.executable, "-m"]
    children: list[Child] = []

    def add(name: str, argv: list[str], health_path: str) -> None:
        if name in enabled:
            url = layout.url(name, ports)
            children.append(Child(name, argv, url, url + health_path))

    if "prometheus" in enabled:
        prometheus_config = render_prometheus_config(layout, ports, enabled)
        add("prometheus", [
            find_binary("prometheus"),
            f"--config.file={prometheus_config}",
            f"--storage.tsdb.path={layout.prometheus_data}",
            f"--web.listen-address={host}:{ports['prometheus']}",
            "--storage.tsdb.retention.time=30d",
            "--web.enable-lifecycle",
        ], "/-/ready")
    if "alertmanager" in enabled:
        alertmanager_config = render_alertmanager_config(layout, ports)
        add("alertmanager", [
            find_binary("alertmanager", "prometheus-alertmanager"),
            f"--config.file={alertmanager_config}",
            f"--storage.path={state / 'alertmanager' / 'data'}",
            f"--web.listen-address={host}:{ports['alertmanager']}",
            "--cluster.listen-address=",
        ], "/-/ready")
    add("webhook", [*python, "stack", "webhook", f"--web.listen-address={host}:{ports['webhook']}"], "/healthz")
    if "node" in enabled:
        add("node", [
            find_binary("prometheus-node-exporter", "node_exporter", package="prometheus-node-exporter",
                        hint="; or start the stack without host metrics: --without node"),
            f"--web.listen-address={host}:{ports['node']}",
            *node_exporter_flags(),
        ], "/")
    if "demo" in enabled:
        add("demo", [*python, "stack.demo", "serve", f"--web.listen-address={host}:{ports['demo']}",
                     f"--end={layout.demo_end}"], "/healthz")
    for source in ("gpu", "containers", "journald"):
        argv = [*python, "exporters", source, f"--web.listen-address={host}:{ports[source]}"]
        if source == "journald":
            argv.append(f"--state.directory={state / 'journald'}")
        add(source, argv, "/healthz")
    if "detector" in enabled:
        config = detector_config or layout.config_dir / "detector" / "boxwatch-detector.example.yml"
        if not config.is_file():
            raise StackError(f"detector config {config} not found (give one with --detector-config)")
        add("detector", [
            *python, "detector", "serve", f"--config={config}",
            f"--prometheus.url={layout.url('prometheus', ports)}",
            f"--web.listen-address={host}:{ports['detector']}",
            f"--set=state_dir={layout.detector_state}",
            # its silences are feedback: known events stay out of training (docs/feedback.md)
            *([f"--set=alertmanager.url={layout.url('alertmanager', ports)}"] if "alertmanager" in enabled else []),
        ], "/healthz")
    return children


def prepare_demo(layout: Layout, days: float = 7.0) -> float:
    """Generate the seeded demo week ending now and load it into a fresh Prometheus data dir.

    Returns the scenario's end, which the live demo server continues from. The detector's demo
    state starts empty too, so it trains on the demo history.
    """
    import subprocess
    import time

    from stack import demo

    end = time.time()
    for path in (layout.state_dir / "prometheus" / "data-demo", layout.state_dir / "detector-demo"):
        if path.exists():
            shutil.rmtree(path)
    data = layout.state_dir / "prometheus" / "data-demo"
    data.parent.mkdir(parents=True, exist_ok=True)
    source = layout.state_dir / "demo.om"
    scenario = demo.write(source, end, days=days)
    result = subprocess.run(
        [find_binary("promtool"), "tsdb", "create-blocks-from", "openmetrics", "--max-block-duration=24h",
         str(source), str(data)],
        capture_output=True, text=True,
    )
    if result.returncode != 0:
        raise StackError(f"promtool could not load the demo data: {result.stderr.strip()[-2000:]}")
    source.unlink()
    return scenario.end
