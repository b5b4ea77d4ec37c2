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

. "$(dirname "$0")/apt.sh"
apt_install haproxy
disable_units haproxy

if ! [ -x /usr/sbin/haproxy ]; then
    echo "install-haproxy: the haproxy package is installed, but /usr/sbin/haproxy is not there" >&2
    exit 1
fi
echo "install-haproxy: installed $(/usr/sbin/haproxy -v | head -1)"
