#!/usr/bin/env bash
# Set up everything the tests need (see scripts/setup.sh), then run the whole suite: lint, config
# checks (promtool, amtool, actionlint, hadolint) and the tests, which start real Prometheus,
# Alertmanager, dockerd and journal files. Extra arguments go to pytest, e.g. `-m "not slow"`.
#
# The process tests spend most of their time waiting on the processes they start, so test files run
# side by side: BOXWATCH_TEST_WORKERS pytest workers (default 3, even on 2 cores), each taking whole
# files (--dist loadfile: a file's module-scoped Prometheus or dockerd is started once). Pass `-n 0`
# (or set BOXWATCH_TEST_WORKERS=0) to run in this process, e.g. under a debugger.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
export PATH="$PWD/.venv/bin:$PWD/.tools/node_modules/.bin:$PATH"
export MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=1
exec .venv/bin/python -m pytest -n "${BOXWATCH_TEST_WORKERS:-3}" --dist loadfile "$@"
