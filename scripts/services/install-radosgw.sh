#!/usr/bin/env bash
# Installs Debian's Ceph daemons for the opt-in radosgw S3 contract tests
# (`make test-radosgw`, the `radosgw` pytest marker): a monitor (ceph-mon), an OSD
# (ceph-osd), the S3 gateway (radosgw), the tools (ceph-common: ceph, monmaptool,
# radosgw-admin) and openssl (the gateway's self-signed certificate). The tests build
# a throwaway single-node cluster of their own in a temp folder
# (tests/services/radosgw.py), so no system cluster is created and the units the
# packages ship are kept from starting. No ceph-mgr: one mon and one OSD
# serve I/O without it, and it would pull in a Python web stack.
# Idempotent: does nothing when the binaries are already there. Run as root, or as a
# user who may sudo. Not part of `make services` (.ci/run): 20-40 s, opt-in.
set -euo pipefail

binaries=(/usr/bin/ceph-mon /usr/bin/ceph-osd /usr/bin/radosgw /usr/bin/radosgw-admin
    /usr/bin/monmaptool /usr/bin/ceph /usr/bin/openssl)

installed() {
    local binary
    for binary in "${binaries[@]}"; do
        [ -x "$binary" ] || return 1
    done
}

if installed; then
    echo "install-radosgw: already installed ($(/usr/bin/radosgw --version 2>/dev/null | head -1))"
    exit 0
fi

. "$(dirname "$0")/apt.sh"
apt_install ceph-mon ceph-osd radosgw ceph-common openssl
disable_units ceph.target ceph-mon.target ceph-osd.target ceph-radosgw.target

if ! installed; then
    echo "install-radosgw: the Ceph packages are installed, but one of ${binaries[*]} is missing" >&2
    exit 1
fi
echo "install-radosgw: installed $(/usr/bin/radosgw --version | head -1)"
