"""``boxwatch-detector validate-config`` and the CLI's flag checks, called in-process (``cli.main``).

The quick tier's view of the command-line checks in tests/detector/test_config.py, which run
``python -m detector`` as a process (seconds each, for the imports).
"""

from __future__ import annotations

import os

from detector import cli
from tests.detector.test_config import BROKEN, EXAMPLE, assert_lists_every_problem, write


def run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = cli.main(list(argv))
    except SystemExit as exit_:  # argparse: --help and bad flags
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def test_the_example_config_is_valid(capsys, monkeypatch):
    for name in [n for n in os.environ if n.startswith("BOXWATCH_")]:  # the example as shipped
        monkeypatch.delenv(name)
    code, out, err = run(capsys, "validate-config", str(EXAMPLE))
    assert code == 0, err
    assert "valid configuration" in out


def test_every_problem_is_listed_with_file_key_and_reason(capsys, tmp_path):
    path = write(tmp_path, BROKEN)
    code, _, err = run(capsys, "validate-config", str(path))
    assert code == 1
    assert_lists_every_problem(err, path)


def test_a_bad_override_names_the_environment_variable_or_the_flag(capsys, monkeypatch, tmp_path):
    path = write(tmp_path, {"schema_version": 1, "queries": {"up": {"expr": "up"}}})
    monkeypatch.setenv("BOXWATCH_READER__RETRIES", "99")
    code, _, err = run(capsys, "validate-config", str(path), "--set", "server.listen_address=nowhere")
    assert code == 1
    assert "environment BOXWATCH_READER__RETRIES: reader.retries:" in err
    assert "flag --set server.listen_address: server.listen_address: expected HOST:PORT" in err


def test_help_lists_every_command_and_the_shard_flag_is_checked(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for command in ("serve", "backfill", "validate-config"):
        assert command in out
    code, out, _ = run(capsys, "serve", "--help")
    assert code == 0 and "--shard I/N" in out and "--web.listen-address" in out
    code, _, err = run(capsys, "serve", "--shard", "2/2")
    assert code == 2 and "expected I/N with 0 <= I < N" in err
