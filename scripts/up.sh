#!/usr/bin/env bash
# Set up what is missing (see scripts/setup.sh), then run the whole stack on localhost:
# Prometheus, Alertmanager, a webhook sink, the exporters and the detector. Ctrl-C stops it all.
# Extra arguments go to `boxwatch-stack up`, e.g. `--demo` or `--without gpu`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=1
exec .venv/bin/boxwatch-stack up "$@"
