#!/usr/bin/env bash
# Create (or reuse) the Python venv holding the real OpenStack libraries the tests use as
# differential oracles: oslo.utils (format_inspector), cursive (image signatures), cryptography;
# and maturin + pytest, which build and test the Python package (python/).
# Usage: scripts/oracle-venv.sh [VENV_DIR]   (default: <repo>/.venv). Prints the python path.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
venv="${1:-$repo/.venv}"
req="$repo/scripts/oracle-requirements.txt"
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$req" | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    if [ "$(id -u)" = 0 ]; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    else
      echo "oracle-venv: python3-venv is missing and I am not root" >&2; exit 1
    fi
  fi
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip >&2
  "$venv/bin/pip" install -q -r "$req" >&2
  echo "$want" > "$stamp"
fi
echo "$venv/bin/python"
