#!/usr/bin/env bash
# Makes sure a PostgreSQL server accepts connections at 127.0.0.1:5432 as user `postgres`
# without a password (trust authentication on loopback) with a database `test`, as the relay's
# PostgreSQL tests expect (relay/src/store/tests.rs, relay/src/store/postgres/tests.rs,
# tests/tests/relay_pg.rs; each test creates and drops a database of its own there):
#
#   scripts/ensure-postgres.sh
#
# - reachable already: nothing to do;
# - installed but stopped: starts the cluster with pg_ctlcluster;
# - not installed: installs Debian's `postgresql` with apt-get (needs root), then starts it.
# Then it makes loopback connections trusted (a cluster of this machine only, used by tests)
# and creates the database `test` if missing.
#
# Exits non-zero when no server can be had, so that CI fails instead of skipping the tests.
set -euo pipefail

host=127.0.0.1
port=5432

reachable() {
    command -v pg_isready >/dev/null 2>&1 && pg_isready -q -h "$host" -p "$port"
}

if ! reachable; then
    if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
        echo "ensure-postgres: installing postgresql with apt-get" >&2
        if [ "$(id -u)" -ne 0 ]; then
            echo "ensure-postgres: PostgreSQL is not installed and this is not root" >&2
            exit 1
        fi
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2
        apt-get install -y -qq postgresql >&2
    fi
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    if [ -z "$version" ]; then
        echo "ensure-postgres: no PostgreSQL cluster found under /etc/postgresql" >&2
        exit 1
    fi
    conf=/etc/postgresql/$version/main
    # Tests connect over TCP on loopback as `postgres` without a password.
    if [ -w "$conf/pg_hba.conf" ] && ! grep -q '^host all all 127.0.0.1/32 trust' "$conf/pg_hba.conf"; then
        sed -i '/^\(host\|local\)/ s/\(scram-sha-256\|md5\|peer\)$/trust/' "$conf/pg_hba.conf"
        printf 'host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\n' >>"$conf/pg_hba.conf"
    fi
    echo "ensure-postgres: starting cluster $version/main" >&2
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    for _ in $(seq 1 30); do
        reachable && break
        sleep 1
    done
fi

if ! reachable; then
    echo "ensure-postgres: no PostgreSQL server at $host:$port" >&2
    exit 1
fi

if ! psql -h "$host" -p "$port" -U postgres -d postgres -Atqc 'SELECT 1' >/dev/null 2>&1; then
    echo "ensure-postgres: the server at $host:$port refuses user postgres without a password" >&2
    exit 1
fi
if [ "$(psql -h "$host" -p "$port" -U postgres -d postgres -Atqc \
    "SELECT count(*) FROM pg_database WHERE datname = 'test'")" != 1 ]; then
    psql -h "$host" -p "$port" -U postgres -d postgres -qc 'CREATE DATABASE test' >&2
fi
echo "ensure-postgres: PostgreSQL ready at postgres://postgres@$host:$port/test"
