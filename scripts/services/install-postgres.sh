#!/usr/bin/env bash
# Installs PostgreSQL's server binaries (Debian's package) for the catalog tests. The
# tests start a throwaway cluster of their own (tests/services/postgres.py), so no
# system cluster is created, let alone started. Idempotent: does nothing when initdb
# is already there. Run as root, or as a user who may sudo; .ci/run calls it.
# (psycopg, the driver, comes from pip: the `dev` and `postgres` extras.)
set -euo pipefail

installed() {
    compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null
}

if installed; then
    echo "install-postgres: already installed ($(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1))"
    exit 0
fi

. "$(dirname "$0")/apt.sh"

# postgresql-common first, told not to create the "main" cluster that installing the
# server would otherwise make (and start).
apt_install postgresql-common
$SUDO sed -i -E 's/^#?[[:space:]]*create_main_cluster[[:space:]]*=.*/create_main_cluster = false/' \
    /etc/postgresql-common/createcluster.conf
# Debian 12 packages PostgreSQL 15; take that version where it exists, else the
# distribution's default.
package=postgresql
if apt-cache show postgresql-15 >/dev/null 2>&1; then
    package=postgresql-15
fi
apt_install "$package"

if ! installed; then
    echo "install-postgres: $package is installed, but there is no initdb under /usr/lib/postgresql" >&2
    exit 1
fi
echo "install-postgres: installed $package ($(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1))"
