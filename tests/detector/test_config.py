"""Configuration: the shipped example is valid, every problem is reported with file, key and reason."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from detector.config import ConfigError, load_config, parse_duration
from tests.harness import REPO, python_module

EXAMPLE = REPO / "detector" / "boxwatch-detector.example.yml"


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(python_module("detector", *args), capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})}, cwd=REPO)


def write(tmp_path: Path, document: dict | str) -> Path:
    path = tmp_path / "detector.yml"
    path.write_text(document if isinstance(document, str) else yaml.safe_dump(document))
    return path


@pytest.mark.slow
def test_example_config_is_valid_and_watches_the_contract_metrics():
    config = load_config(EXAMPLE, environ={})
    exprs = " ".join(q.expr for q in config.queries.values())
    for metric in ("boxwatch_gpu_temperature_celsius", "boxwatch_container_cpu_seconds_total",
                   "boxwatch_journal_entries_total"):
        assert metric in exprs
    assert config.server.listen_address == "127.0.0.1:9875"
    result = run_cli("validate-config", str(EXAMPLE))
    assert result.returncode == 0, result.stderr
    assert "valid configuration" in result.stdout


# A config with one problem per key; what validate-config must say of each (the in-process twin of
# this test, tests/detector/test_config_unit.py, checks the same output).
BROKEN = {
    "schema_version": 2,
    "reader": {"url": "ftp://prometheus", "timeout": "5 minutes", "surprise": 1},
    "queries": {
        "a": {"expr": "", "step": "0s", "model": "nosuch"},
        "b": {"expr": "up", "params": {"windw": 3}, "direction": "sideways"},
    },
}
BROKEN_PROBLEMS = {
    "schema_version": "Input should be 1",
    "reader.url": "http:// or https://",
    "reader.timeout": "expected a duration",
    "reader.surprise": "unknown key",
    "queries.a.expr": "at least 1 character",
    "queries.a.step": "duration must be positive",
    "queries.a.model": "unknown model 'nosuch'",
    "queries.b.params": "unknown parameter(s) windw",
    "queries.b.direction": "'both', 'above' or 'below'",
}


def assert_lists_every_problem(stderr: str, path) -> None:
    """validate-config's report of BROKEN: one line per problem, with file, key and reason."""
    lines = [line.strip() for line in stderr.splitlines()[1:]]
    for key, reason in BROKEN_PROBLEMS.items():
        matching = [line for line in lines if line.startswith(f"{path}: {key}: ")]
        assert matching, f"no problem reported for {key}:\n{stderr}"
        assert reason in matching[0]
    assert len(lines) == len(BROKEN_PROBLEMS), stderr


@pytest.mark.slow
def test_every_problem_is_listed_with_file_key_and_reason(tmp_path):
    path = write(tmp_path, BROKEN)
    result = run_cli("validate-config", str(path))
    assert result.returncode == 1
    assert_lists_every_problem(result.stderr, path)


@pytest.mark.slow
def test_overrides_from_environment_and_flags_are_named_when_wrong(tmp_path):
    path = write(tmp_path, {"schema_version": 1, "queries": {"up": {"expr": "up"}}})
    config = load_config(path, overrides={"reader.url": "http://flag:9090"},
                         environ={"BOXWATCH_READER__URL": "http://env:9090", "BOXWATCH_STATE_DIR": "/tmp/x"})
    assert config.reader.url == "http://flag:9090"  # flags beat the environment
    assert config.state_dir == "/tmp/x"
    result = run_cli("validate-config", str(path), "--set", "server.listen_address=nowhere",
                     env={"BOXWATCH_READER__RETRIES": "99"})
    assert result.returncode == 1
    assert "environment BOXWATCH_READER__RETRIES: reader.retries:" in result.stderr
    assert "flag --set server.listen_address: server.listen_address: expected HOST:PORT" in result.stderr


@pytest.mark.parametrize("text, reason", [
    ("queries: [unclosed", "not valid YAML (line 1"),
    ("", "the file is empty"),
    ("- a list", "expected a mapping at the top level"),
])
def test_unreadable_documents(tmp_path, text, reason):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text), environ={})
    assert reason in str(err.value)


def test_missing_file_and_missing_queries(tmp_path):
    with pytest.raises(ConfigError, match="cannot read file"):
        load_config(tmp_path / "absent.yml", environ={})
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, {"schema_version": 1}), environ={})
    assert [p.key for p in err.value.problems] == ["queries"]


@pytest.mark.slow
def test_serve_refuses_a_bad_config(tmp_path):
    path = write(tmp_path, {"schema_version": 1, "queries": {"x": {"expr": "up", "fit_window": "1m"}}})
    result = run_cli("serve", "--config", str(path))
    assert result.returncode == 1
    assert "queries.x: fit_window must span at least two steps" in result.stderr
    assert "refusing to start" in result.stderr


def test_presets_and_query_params_merge(tmp_path):
    path = write(tmp_path, {
        "schema_version": 1,
        "models": {"short": {"name": "robust", "params": {"window": 30, "k": 3}}},
        "queries": {"q": {"expr": "up", "model": "short", "params": {"k": 4}}},
    })
    config = load_config(path, environ={})
    assert config.model_for("q") == ("robust", {"window": 30, "k": 4})
    changed = load_config(path, overrides={"queries.q.params.k": "5"}, environ={})
    assert config.query_hash("q") != changed.query_hash("q")


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("1h30m", 5400), ("14d", 14 * 86400), ("500ms", 0.5),
                                           (120, 120)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5 minutes", "1x", "-5m", True])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.slow
def test_help_lists_every_command_and_the_shard_flag_is_checked():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("serve", "backfill", "validate-config"):
        assert command in result.stdout
    serve = run_cli("serve", "--help")
    assert "--shard I/N" in serve.stdout and "--web.listen-address" in serve.stdout
    bad = run_cli("serve", "--shard", "2/2")
    assert bad.returncode == 2 and "expected I/N with 0 <= I < N" in bad.stderr


ISSUE_CONFIG = """\
schema_version: 1
models:
  forest: {name: iforest, params: {n_estimators: 0}}
  bins: {name: seasonal, params: {phase_bins: 1000000000}}
queries:
  a: {expr: up}
  b: {expr: up, fit_window: 100y}
  c: {expr: up, model: forest, group_by: [instance]}
  a: {expr: up, params: {k: -3, window: "abc"}}
  d: {expr: up, step: 1s, fit_window: 30d}
  e: {expr: up, model: bins}
"""


@pytest.mark.slow
def test_model_parameters_duplicate_keys_and_absurd_windows_are_each_named(tmp_path):
    path = write(tmp_path, ISSUE_CONFIG)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    found = {p.key: p.reason for p in caught.value.problems}
    assert all(p.source == str(path) for p in caught.value.problems)
    assert "duplicate key (line 9; first given on line 6)" in found["queries.a"]
    assert "greater than 0" in found["queries.a.params.k"] and "-3" in found["queries.a.params.k"]
    assert "valid integer" in found["queries.a.params.window"]
    assert "must be at most 366d" in found["queries.b.fit_window"]
    assert "greater than or equal to 1" in found["models.forest.params.n_estimators"]
    assert "less than or equal to 1440" in found["models.bins.params.phase_bins"]
    assert "at most 1000000" in found["queries.d"]
    assert len(found) == 7, found  # a preset's problem is not repeated for each query that uses it
    result = run_cli("validate-config", str(path))
    assert result.returncode == 1
    assert "7 problem(s)" in result.stderr


@pytest.mark.parametrize("params, key, reason", [
    ({"seasonality": ["1D", "fortnight"]}, "seasonality", "pandas offset"),
    ({"seasonality": "hourly"}, "seasonality", "'auto', 'daily', 'weekly' or 'none'"),
    ({"level_alpha": 2}, "level_alpha", "less than or equal to 1"),
    ({"clip_outliers": "yes"}, "clip_outliers", "valid boolean"),
])
def test_seasonal_parameters_are_typed_and_bounded(tmp_path, params, key, reason):
    path = write(tmp_path, {"schema_version": 1, "queries": {"q": {"expr": "up", "model": "seasonal",
                                                                    "params": params}}})
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    [problem] = caught.value.problems
    assert problem.key == f"queries.q.params.{key}" and reason in problem.reason


def test_every_model_parameter_has_a_declared_type_and_range():
    from detector.models import MODELS
    from detector.models.params import CONSTRAINTS, init_parameters, params_model

    for name in MODELS:
        assert set(CONSTRAINTS[name]) == set(init_parameters(name)), name
        defaults = params_model(name)().model_dump()
        assert defaults == {p: v.default for p, v in init_parameters(name).items()}, name
