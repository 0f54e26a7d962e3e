"""The local model store: signed files, the key's and the files' ownership and mode, failed writes counted.

Processes that load planted files are in test_registry_processes.py; these check the rules one by one.
"""

from __future__ import annotations

import os
import pickle

import pytest

from detector.models import make_model
from detector.store import STATS, LocalStore, ModelBundle, ModelKey, UntrustedModel
from tests.detector.conftest import wave


def _bundle(query: str = "load") -> ModelBundle:
    import pandas as pd

    points = wave(0, 3600 * 6)
    frame = pd.DataFrame({"value": [v for _, v in points]},
                         index=pd.to_datetime([t for t, _ in points], unit="s", utc=True))
    model = make_model("robust", {"window": 30}).fit(frame)
    return ModelBundle(query=query, model_name="robust", models={(("instance", "a"),): model}, params={"window": 30},
                       config_hash="h", training_start=0.0, training_end=3600 * 6.0, fitted_at=1.0)


def test_a_saved_bundle_is_signed_and_loads_back(tmp_path):
    store = LocalStore(tmp_path)
    store.save(_bundle())
    data = (tmp_path / "models" / "load.pkl").read_bytes()
    assert data.startswith(b"boxwatch-model hmac-sha256 ")
    assert (tmp_path / "models" / "load.pkl").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "model.key").stat().st_mode & 0o777 == 0o600
    loaded = store.load("load")
    assert loaded is not None and loaded.shard == (0, 1) and list(loaded.models) == [(("instance", "a"),)]


def test_a_file_signed_with_another_key_is_refused_and_counted(tmp_path):
    LocalStore(tmp_path / "other").save(_bundle())
    store = LocalStore(tmp_path / "mine")
    (tmp_path / "mine" / "models").mkdir(parents=True)
    os.replace(tmp_path / "other" / "models" / "load.pkl", tmp_path / "mine" / "models" / "load.pkl")
    before = STATS.copy()[0]["store"]
    assert store.load("load") is None
    assert STATS.copy()[0]["store"] == before + 1


def test_a_tampered_payload_fails_the_signature(tmp_path):
    key = ModelKey(tmp_path / "k")
    signed = key.sign(pickle.dumps({"a": 1}))
    assert pickle.loads(key.verify(signed)) == {"a": 1}
    with pytest.raises(UntrustedModel, match="wrong signature"):
        key.verify(signed[:-1] + bytes([signed[-1] ^ 1]))
    with pytest.raises(UntrustedModel, match="not signed"):
        key.verify(pickle.dumps({"a": 1}))


def test_a_key_others_can_read_is_refused(tmp_path):
    key = ModelKey(tmp_path / "model.key")
    key.key()
    os.chmod(tmp_path / "model.key", 0o644)
    with pytest.raises(UntrustedModel, match="readable by others"):
        ModelKey(tmp_path / "model.key").key()
    os.chmod(tmp_path / "model.key", 0o440)  # a Kubernetes Secret with a group: fine
    assert ModelKey(tmp_path / "model.key").key() == key.key()


def test_a_failed_write_is_counted_and_raised(tmp_path):
    (tmp_path / "models").write_text("in the way")
    before = STATS.copy()[1]
    with pytest.raises(OSError):
        LocalStore(tmp_path).save(_bundle())
    assert STATS.copy()[1] == before + 1
