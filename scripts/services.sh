#!/usr/bin/env bash
# Starts the local Postgres, Redis and memcached when they are not running (no systemd assumed), and makes sure
# the database exists and is migrated. Usage: scripts/services.sh start [DBNAME]
set -euo pipefail
cd "$(dirname "$0")/.."
DB=${2:-wardrobe}
PGHOST_TCP=127.0.0.1
say() { printf '==> %s\n' "$*" >&2; }

wait_for() {  # wait_for DESCRIPTION COMMAND...
    local what=$1; shift
    for _ in $(seq 1 50); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
    echo "$what did not come up" >&2; return 1
}

start_postgres() {
    if pg_isready -q -h "$PGHOST_TCP" -p 5432; then return; fi
    local version
    version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
    if [ -z "$version" ]; then
        version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
        say "creating Postgres $version cluster"
        pg_createcluster "$version" main >/dev/null
    fi
    say "starting Postgres $version"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start
    wait_for Postgres pg_isready -q -h "$PGHOST_TCP" -p 5432
}

ensure_database() {
    local me
    me=$(id -un)
    if ! psql -qtAX -d postgres -c 'select 1' >/dev/null 2>&1; then
        say "creating Postgres role $me"
        runuser -u postgres -- psql -qtAX -c "CREATE ROLE \"$me\" SUPERUSER LOGIN" >/dev/null
    fi
    if [ "$(psql -qtAX -d postgres -c "select 1 from pg_database where datname = '$DB'")" != 1 ]; then
        say "creating database $DB"
        createdb "$DB"
    fi
}

allow_local_replication() {
    # The replica tests (tests/test_replicas.py) take a pg_basebackup over the local socket: replication
    # connections match only pg_hba lines naming `replication`, never `all`.
    local hba
    hba=$(psql -qtAX -d postgres -c 'show hba_file')
    if ! grep -Eq '^[[:space:]]*local[[:space:]]+replication[[:space:]]' "$hba"; then
        say "allowing local replication connections in $hba"
        echo 'local   replication     all                                     peer' >>"$hba"
        psql -qtAX -d postgres -c 'select pg_reload_conf()' >/dev/null
    fi
}

start_redis() {
    if redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then return; fi
    say "starting Redis"
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
        --dir /var/lib/redis --logfile /var/log/redis/wardrobe.log
    wait_for Redis redis-cli -h 127.0.0.1 -p 6379 ping
}

start_memcached() {
    if (exec 3<>/dev/tcp/127.0.0.1/11211) 2>/dev/null; then return; fi
    say "starting memcached"
    local user=root
    id memcache >/dev/null 2>&1 && user=memcache
    memcached -d -u "$user" -l 127.0.0.1 -p 11211 -m 256 -c 8192 -t 2
    wait_for memcached bash -c '(exec 3<>/dev/tcp/127.0.0.1/11211)'
}

case "${1:-start}" in
    start)
        start_postgres
        ensure_database
        allow_local_replication
        start_redis
        start_memcached
        WARDROBE_DATABASE_URL=${WARDROBE_DATABASE_URL:-postgresql:///$DB} .venv/bin/wardrobe-migrate >&2
        ;;
    *) echo "usage: $0 start [DBNAME]" >&2; exit 2 ;;
esac
