"""boxwatch.files: a replaced file is the old one or the new one, never a part, and no temporary is left."""

from __future__ import annotations

import os

import pytest

from boxwatch.files import atomic_path, atomic_write


def test_atomic_write_replaces_and_leaves_nothing_beside(tmp_path):
    target = tmp_path / "state.json"
    target.write_text("old")
    atomic_write(target, '{"new": true}')
    assert target.read_text() == '{"new": true}'
    atomic_write(target, b"\x00bytes", durable=False)
    assert target.read_bytes() == b"\x00bytes"
    assert os.listdir(tmp_path) == ["state.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "reference.pkl"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed while writing")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["reference.pkl"]


def test_atomic_path_hands_a_name_to_writers_that_want_one(tmp_path):
    target = tmp_path / "report.html"
    with atomic_path(target, suffix=".html.tmp") as tmp:
        assert tmp.parent == tmp_path and tmp.name.endswith(".html.tmp") and not target.exists()
        tmp.write_text("<html></html>")
    assert target.read_text() == "<html></html>"
