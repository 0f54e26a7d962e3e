#!/usr/bin/env bash
# Set up everything the tests need (see scripts/setup.sh), then run the whole suite: lint, config
# checks (promtool, amtool, actionlint, hadolint) and the tests, which start real Prometheus,
# Alertmanager, dockerd and journal files. Extra arguments go to pytest, e.g. `-m "not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
export PATH="$PWD/.venv/bin:$PWD/.tools/node_modules/.bin:$PATH"
export MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=1
exec .venv/bin/python -m pytest "$@"
