#!/usr/bin/env bash
# Installs Debian's haproxy for the multi-node tests (tests/integration/test_multinode.py):
# the TCP load balancer in front of 2-3 imgshare nodes. The tests write a config of
# their own and run haproxy in the foreground (-db) as a child process, so the system
# service that the package makes is stopped and disabled here. Idempotent: does nothing
# when haproxy is already there. Run as root, or as a user who may sudo; `make services`
# (and so .ci/run) calls it.
set -euo pipefail

if command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ]; then
    echo "install-haproxy: already installed ($(/usr/sbin/haproxy -v 2>/dev/null | head -1 || haproxy -v | head -1))"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive

# Keep the package's own service from starting (it would listen on nothing useful,
# but a test machine runs no daemons it did not ask for): policy-rc.d refuses starts
# during the install, where invoke-rc.d honours it.
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
    $SUDO chmod 755 "$policy"
    made_policy=1
fi
cleanup() {
    if [ "$made_policy" = 1 ]; then
        $SUDO rm -f "$policy"
    fi
}
trap cleanup EXIT

$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends haproxy >/dev/null
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now haproxy >/dev/null 2>&1 || true
fi

if ! [ -x /usr/sbin/haproxy ]; then
    echo "install-haproxy: the haproxy package is installed, but /usr/sbin/haproxy is not there" >&2
    exit 1
fi
echo "install-haproxy: installed $(/usr/sbin/haproxy -v | head -1)"
