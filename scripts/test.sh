#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what it needs, then lint + pytest.
# Broker tests start the embedded tansu broker themselves and FAIL (never skip) if it cannot start.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v promtool >/dev/null 2>&1 || ! command -v docker-compose >/dev/null 2>&1 \
        || ! command -v kcat >/dev/null 2>&1 || ! command -v stunnel4 >/dev/null 2>&1; then
    # Debian: prometheus (real server + promtool) for the monitoring tests, docker-compose to
    # validate docker-compose.yml (no Docker engine needed for `config`), kcat for the interop
    # test, stunnel4 as the TLS terminator in front of the broker for the TLS tests.
    if command -v apt-get >/dev/null 2>&1; then
        SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
        $SUDO apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus docker-compose kcat stunnel4 >/dev/null
    else
        echo "promtool/docker-compose/kcat/stunnel4 missing and apt-get unavailable: install them first" >&2
        exit 1
    fi
fi
# The whole suite at full scale: the core's scale and property sweeps at the sizes their
# docstrings promise (tests/scale.py; a plain `pytest -m "not kafka"` runs them quick).
export FEEDBACK_STREAM_TEST_SCALE="${FEEDBACK_STREAM_TEST_SCALE:-full}"
python3 -m pip install -q --disable-pip-version-check -e '.[test]'
python3 -m ruff check stream topologies tests bench
python3 -m pytest "$@"
