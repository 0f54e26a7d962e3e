"""The registry across real processes: the embedded store from one CLI call to the next, shards, foreign models.

One Prometheus with 12 h of six series per module. Every ``train``, ``promote`` and ``serve``
is its own process, as cron and an operator run them; nothing is shared but the state dir (and,
for the shards, one MLflow server and one signing key).
"""

from __future__ import annotations

import builtins
import json
import os
import pickle
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from detector.store import ModelKey
from tests.detector.conftest import DetectorProcess, detector_config, mlflow_server
from tests.harness import REPO, Prometheus, backfill, openmetrics

STEP = 60
NAME = "boxwatch.load.robust"
INSTANCES = ("a", "b", "c", "d", "e", "f")
pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]


class Foreign:
    """Unpickling this creates ``marker``: what any payload could do, instead of an innocent ``open``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return builtins.open, (str(self.marker), "w")


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    root = tmp_path_factory.mktemp("registry-processes")
    end = float(int(time.time()) // STEP * STEP)
    rng = np.random.default_rng(7)
    stamps = np.arange(end - 12 * 3600, end + 1, STEP, dtype=float)
    series = {("bw_load", (("instance", name),)): [(float(t), round(float(50 + rng.normal(0, 1)), 3)) for t in stamps]
              for name in INSTANCES}
    backfill(root / "data", openmetrics(series))
    prometheus = Prometheus(root / "prometheus", data_dir=root / "data")
    yield {"root": root, "prometheus": prometheus}
    prometheus.stop()


def _config(history, state: Path, **registry) -> dict:
    return detector_config(history["prometheus"].url, state, {
        "load": {"expr": "bw_load", "step": "60s", "fit_window": "12h", "fit_every": "1d",
                 "params": {"window": 120, "k": 5.0}},
    }, registry={"enabled": True, **registry})


def cli(path: Path, cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "detector", *args, "--config", str(path)],
                            capture_output=True, text=True, timeout=180, cwd=cwd,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    if check and result.returncode != 0:
        raise AssertionError(f"{args} exited {result.returncode}:\n{result.stdout}\n{result.stderr[-3000:]}")
    return result


def _champion(path: Path, cwd: Path, name: str = NAME) -> str:
    rows = json.loads(cli(path, cwd, "models", "--json").stdout)
    return next(r["version"] for r in rows if r["name"] == name and "champion" in r["aliases"])


def test_train_train_promote_rollback_on_the_embedded_store(history, tmp_path):
    """Nothing but ``registry: {enabled: true}``: each verb a new process, from a working directory of its own."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    path = tmp_path / "detector.yml"
    path.write_text(yaml.safe_dump(_config(history, tmp_path / "state")))
    first = json.loads(cli(path, cwd, "train", "--json").stdout)
    assert [(d["name"], d["version"], d["promoted"]) for d in first["decisions"]] == [(NAME, "1", True)]
    second = json.loads(cli(path, cwd, "train", "--json").stdout)
    assert [(d["name"], d["version"]) for d in second["decisions"]] == [(NAME, "2")], second
    assert second["decisions"][0]["champion_version"] == "1"
    cli(path, cwd, "promote", NAME, "2")
    assert _champion(path, cwd) == "2"
    assert "from v2 to v1" in cli(path, cwd, "rollback", NAME).stdout
    assert _champion(path, cwd) == "1"
    assert sorted(p.name for p in cwd.iterdir()) == []  # no stray mlflow.db or mlruns/
    key = tmp_path / "state" / "model.key"
    assert key.stat().st_mode & 0o777 == 0o600


def _scored(detector: DetectorProcess) -> set[str]:
    return {s.labels["instance"] for s in detector.samples("boxwatch_anomaly_score")}


def _versions(detector: DetectorProcess) -> dict[str, str]:
    return {s.labels["query"]: s.labels["version"] for s in detector.samples("boxwatch_model_info")}


def test_two_shards_against_one_mlflow_server_keep_their_own_series_after_restarts(history, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    key = shared / "model.key"
    ModelKey(key).key()  # one key for both replicas, as a Kubernetes Secret would give them
    with mlflow_server(tmp_path / "mlflow") as (url, _):
        _two_shards(history, tmp_path, key, {"tracking_uri": url})


def _two_shards(history, tmp_path: Path, key: Path, registry: dict) -> None:
    def start(index: int) -> DetectorProcess:
        config = {**_config(history, tmp_path / f"state{index}", **registry), "model_key_file": str(key)}
        return DetectorProcess(tmp_path / f"shard{index}", config, ("--shard", f"{index}/2"))

    seen: dict[int, set[str]] = {}
    versions: dict[int, dict[str, str]] = {}
    for round_ in range(2):
        shards = [start(0), start(1)]
        try:
            for index, detector in enumerate(shards):
                detector.wait_for(lambda d=detector: _versions(d).get("load", "local") != "local"
                                  and _scored(d), 120, "a registered model serving and scores")
                scored = _scored(detector)
                if round_ == 0:
                    seen[index], versions[index] = scored, _versions(detector)
                else:  # after the restart: the same series, from the same version, not refitted
                    assert scored == seen[index] and _versions(detector) == versions[index]
                    assert "loaded persisted models" in detector.output()
        finally:
            for detector in shards:
                detector.stop()
    assert seen[0] and seen[1] and not seen[0] & seen[1] and seen[0] | seen[1] == set(INSTANCES)

    path = tmp_path / "shard0" / "detector.yml"
    rows = json.loads(cli(path, tmp_path, "models", "--json").stdout)
    assert {r["name"] for r in rows} == {f"{NAME}.shard0of2", f"{NAME}.shard1of2"}

    # A replica refuses the other shard's bundle even when it is pointed at it by hand.
    from detector.config import load_config
    from detector.registry import Registry, RejectedModel

    other = next(r for r in rows if r["name"].endswith("shard1of2"))
    with pytest.raises(RejectedModel, match="fitted for shard 1/2, this replica is 0/2"):
        Registry(load_config(path), (0, 2)).load_version(other["name"], other["version"])


def test_a_foreign_pickle_in_the_state_dir_is_refused_and_refitted(history, tmp_path):
    marker = tmp_path / "pwned"
    state = tmp_path / "state"
    (state / "models").mkdir(parents=True)
    (state / "models" / "load.pkl").write_bytes(pickle.dumps({"format": 1, "bundle": Foreign(marker)}))
    config = _config(history, state)
    config["registry"]["enabled"] = False
    detector = DetectorProcess(tmp_path / "serve", config)
    try:
        detector.wait_for(lambda: detector.sample("boxwatch_detector_models_ready") == [1.0], 60, "a refit")
        assert detector.sample("boxwatch_detector_rejected_models_total", source="store") == [1.0]
        assert "refusing a model file" in detector.output()
    finally:
        detector.stop()
    assert not marker.exists()
    # What it wrote instead is signed; a group-writable copy is refused too.
    assert (state / "models" / "load.pkl").read_bytes().startswith(b"boxwatch-model hmac-sha256 ")
    os.chmod(state / "models" / "load.pkl", 0o664)
    detector = DetectorProcess(tmp_path / "serve2", config)
    try:
        detector.wait_for(lambda: detector.sample("boxwatch_detector_rejected_models_total", source="store") == [1.0],
                          30, "the writable file refused")
        assert "writable by group or others" in detector.output()
    finally:
        detector.stop()


def _register_foreign_champion(state: Path, tmp_path: Path, marker: Path) -> None:
    """Version 1 of ``NAME`` in the embedded store of ``state``: a pickle that creates ``marker``, as ``champion``."""
    from detector.mlflow_model import BundlePythonModel
    from detector.registry import import_mlflow

    uri = f"sqlite:///{state / 'mlflow' / 'mlflow.db'}"
    (state / "mlflow").mkdir(parents=True)
    mlflow = import_mlflow()
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("boxwatch-detector", artifact_location=(state / "mlflow" / "artifacts").as_uri())
    evil = tmp_path / "bundle.pkl"
    # Signed, but with a key of the attacker's own: the format is public, the detector's key is not.
    evil.write_bytes(ModelKey(tmp_path / "attacker.key").sign(pickle.dumps(Foreign(marker))))
    run = client.create_run(experiment)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    with mlflow.start_run(run_id=run.info.run_id):
        info = mlflow.pyfunc.log_model(name="model", python_model=BundlePythonModel(),
                                       artifacts={"bundle": str(evil)}, pip_requirements=["pandas"])
    client.create_registered_model(NAME)
    version = client.create_model_version(NAME, info.model_uri, run_id=run.info.run_id,
                                          model_id=getattr(info, "model_id", None))
    client.set_registered_model_alias(NAME, "champion", version.version)


def test_a_foreign_version_loaded_by_several_threads_at_once_is_refused_by_each(history, tmp_path):
    """Serving and a fit's registration load the champion at the same time: each must see the refusal,
    not a cache file another thread deleted (which once stopped the refit from being registered)."""
    from detector.config import DetectorConfig
    from detector.registry import Registry, RejectedModel

    marker = tmp_path / "pwned"
    state = tmp_path / "state"
    _register_foreign_champion(state, tmp_path, marker)
    registry = Registry(DetectorConfig.model_validate(_config(history, state)))
    barrier = threading.Barrier(6)
    outcomes: list[str] = []

    def load() -> None:
        barrier.wait()
        try:
            registry.load_version(NAME, "1")
            outcomes.append("loaded")
        except RejectedModel:
            outcomes.append("refused")
        except Exception as err:  # noqa: BLE001 - what the test is about
            outcomes.append(f"{type(err).__name__}: {err}")

    threads = [threading.Thread(target=load) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert outcomes == ["refused"] * 6
    assert not marker.exists()


def test_a_foreign_pickle_registered_as_champion_is_refused(history, tmp_path):
    """Anyone who reaches MLflow can register a version and move ``champion``: serve must not unpickle it."""
    marker = tmp_path / "pwned"
    state = tmp_path / "state"
    config = _config(history, state)
    _register_foreign_champion(state, tmp_path, marker)

    detector = DetectorProcess(tmp_path / "serve", config)
    try:
        detector.wait_for(lambda: _versions(detector).get("load", "local") not in ("local", "1"), 120,
                          "a version of its own serving")
        assert detector.sample("boxwatch_detector_rejected_models_total", source="registry") == [1.0]
        assert "refusing a registered model version" in detector.output()
    finally:
        detector.stop()
    assert not marker.exists()
    rows = json.loads(cli(tmp_path / "serve" / "detector.yml", tmp_path, "models", "--json").stdout)
    champion = next(r for r in rows if "champion" in r["aliases"])
    assert champion["version"] == "2" and "v1 was refused" in champion["reason"]


def test_a_state_dir_that_cannot_be_written_is_counted_and_the_fit_still_serves(history, tmp_path):
    """Disk full, read-only, another owner: each write fails with an OSError; here ``models`` is a file."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "models").write_text("in the way")
    config = _config(history, state)
    config["registry"]["enabled"] = False
    detector = DetectorProcess(tmp_path / "serve", config)
    try:
        detector.wait_for(lambda: detector.sample("boxwatch_detector_models_ready") == [1.0], 60, "a fit")
        assert detector.sample("boxwatch_detector_persist_errors_total") == [1.0]
        assert len(detector.samples("boxwatch_anomaly_score")) == len(INSTANCES)  # served from memory
        assert "cannot write to the state directory" in detector.output()
    finally:
        detector.stop()
