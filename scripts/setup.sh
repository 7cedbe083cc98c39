#!/usr/bin/env bash
# Shared set-up for ./scripts/demo and ./scripts/test: the system packages
# the tests and the demo need (installed through apt when run as root,
# otherwise named so a person can install them), then the project's venv.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${RETROFIT_VENV:-$ROOT/.venv}
export PATH="$PATH:/usr/sbin:/sbin"

if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "retrofit-agent needs Python 3.11 or newer (found: $(python3 --version 2>&1))" >&2
  exit 1
fi

missing=()
command -v mosquitto >/dev/null || missing+=(mosquitto)
command -v socat >/dev/null || missing+=(socat)
command -v openssl >/dev/null || missing+=(openssl)
# The power-cut tests mount a FUSE file system (tests/powercut/fs.py).
command -v fusermount3 >/dev/null || missing+=(fuse3)
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing ${missing[*]} with apt-get" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "setup: missing ${missing[*]}; install with: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV" >&2
  python3 -m venv "$VENV"
fi
# The optional parts a script needs: ./scripts/test the test tools,
# ./scripts/demo also the demo's (its plot). The stamp lists what is in.
extras=${RETROFIT_EXTRAS:-test}
stamp="$VENV/.retrofit-agent-installed"
if [ -f "$stamp" ] && [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
  rm -f "$stamp"  # pyproject.toml changed: everything again
fi
if [ ! -f "$stamp" ] || ! grep -qxF "$extras" "$stamp"; then
  echo "setup: installing retrofit-agent [$extras] into $VENV" >&2
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "${ROOT}[${extras}]"
  echo "$extras" >> "$stamp"
  echo "setup: the commands are in $VENV/bin (not on PATH): $VENV/bin/retrofit-agent --help, or 'source $VENV/bin/activate'" >&2
fi
