#!/usr/bin/env bash
# PgBouncer in transaction-pooling mode in front of the private PostgreSQL of postgres/server.sh:
# how a lab puts many clients (a thousand nodes' senders) in front of one server. For the tests
# (tests/store/test_central_pgbouncer.py) and to try the set-up of docs/CENTRAL.md on one machine.
#
#   postgres/pgbouncer.sh up     install pgbouncer (apt-get, as root) if needed, start it (idempotent)
#   postgres/pgbouncer.sh down   stop it
#   postgres/pgbouncer.sh env    print `export AETHERIUM_TEST_PGBOUNCER=postgresql://...`
#
# A second one, in front of the small server of .ci/run (the 300-sender test):
#   AETHERIUM_PG_DIR=/tmp/aetherium-pg-small AETHERIUM_PG_PORT=15433 AETHERIUM_PGBOUNCER_DIR=/tmp/aetherium-pgbouncer-small \
#   AETHERIUM_PGBOUNCER_PORT=16433 AETHERIUM_PGBOUNCER_ENV=AETHERIUM_TEST_PGBOUNCER_SMALL postgres/pgbouncer.sh up
#
# It listens on 127.0.0.1:${AETHERIUM_PGBOUNCER_PORT:-16432}, pools at most
# ${AETHERIUM_PGBOUNCER_POOL:-4} server connections per database and role, and serves the database
# ${AETHERIUM_PG_DB:-aetherium}_pool, which it creates on the server (PgBouncer passes no `options`,
# so a private search_path is out: a database of its own keeps the tests apart). The server must be
# up (postgres/server.sh up, same AETHERIUM_PG_DIR / AETHERIUM_PG_PORT). Everything lives in
# ${AETHERIUM_PGBOUNCER_DIR:-/tmp/aetherium-pgbouncer} (mode 700, owned by the server's OS user;
# refused if it is anything else, e.g. a planted symlink). PgBouncer runs as that user, never root.
set -euo pipefail

SCRIPT=pgbouncer.sh
# shellcheck source=postgres/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"   # PG_DIR, PG_PORT, PG_DB, PG_ROLE, OS_USER, RUN, PASS_FILE; die, info, as_server, psql_admin, create_db

DIR="${AETHERIUM_PGBOUNCER_DIR:-/tmp/aetherium-pgbouncer}"
PORT="${AETHERIUM_PGBOUNCER_PORT:-16432}"
POOL="${AETHERIUM_PGBOUNCER_POOL:-4}"
POOL_DB="${PG_DB}_pool"
ENV_NAME="${AETHERIUM_PGBOUNCER_ENV:-AETHERIUM_TEST_PGBOUNCER}"
WAIT_S=30

[[ "$PORT" =~ ^[1-9][0-9]*$ ]] || { echo "pgbouncer.sh: ERROR: AETHERIUM_PGBOUNCER_PORT='$PORT' is not a port number" >&2; exit 2; }
[[ "$POOL" =~ ^[1-9][0-9]*$ ]] || { echo "pgbouncer.sh: ERROR: AETHERIUM_PGBOUNCER_POOL='$POOL' is not a positive integer" >&2; exit 2; }
[[ "$ENV_NAME" =~ ^[A-Z_][A-Z0-9_]*$ ]] || { echo "pgbouncer.sh: ERROR: AETHERIUM_PGBOUNCER_ENV='$ENV_NAME' must be an upper-case variable name" >&2; exit 2; }

INI="$DIR/pgbouncer.ini"
PID_FILE="$DIR/pgbouncer.pid"
LOG="$DIR/pgbouncer.log"

bouncer_pid() {
    local pid
    [[ -r "$PID_FILE" ]] || return 1
    pid="$(tr -dc '0-9' <"$PID_FILE")"
    [[ -n "$pid" && "$(cat "/proc/$pid/comm" 2>/dev/null)" == pgbouncer ]] || return 1
    echo "$pid"
}

install_packages() {
    command -v pgbouncer >/dev/null 2>&1 && return 0
    [[ "$(id -u)" -eq 0 ]] || die "pgbouncer is not installed and installing needs root: sudo apt-get install pgbouncer"
    info "installing pgbouncer with apt-get"
    apt-get update -q </dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends pgbouncer </dev/null
    # Debian's package starts its own service on port 6432; ours is separate, and that one is not needed.
    if command -v systemctl >/dev/null 2>&1; then systemctl stop pgbouncer >/dev/null 2>&1 || true; fi
    command -v pgbouncer >/dev/null 2>&1 || die "pgbouncer still missing after apt-get install"
}

make_dir() {  # a private folder: created here, or one that is already ours (not a link, not another's)
    local me
    me="$(as_server id -u)"
    if [[ -L "$DIR" ]]; then die "$DIR is a symbolic link; remove it (someone else may have planted it)"; fi
    if [[ ! -e "$DIR" ]]; then
        (umask 077 && mkdir "$DIR")
        [[ "$(id -u)" -ne 0 ]] || chown "$OS_USER" "$DIR"
    fi
    [[ -d "$DIR" && "$(stat -c %u "$DIR")" == "$me" ]] || die "$DIR exists but is not a folder owned by $OS_USER; remove it or set AETHERIUM_PGBOUNCER_DIR"
    chmod 700 "$DIR"
}

write_config() {
    local pass
    pass="$(cat "$PASS_FILE")"   # hex digits only
    as_server tee "$DIR/userlist.txt" >/dev/null <<EOF
"$PG_ROLE" "$pass"
EOF
    as_server tee "$INI" >/dev/null <<EOF
; Written by postgres/pgbouncer.sh.
[databases]
$POOL_DB = host=127.0.0.1 port=$PG_PORT dbname=$POOL_DB

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PORT
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $DIR/userlist.txt
pool_mode = transaction
default_pool_size = $POOL
max_client_conn = 1000
logfile = $LOG
pidfile = $PID_FILE
EOF
    as_server chmod 600 "$DIR/userlist.txt" "$INI"
}

cmd_up() {
    install_packages
    [[ -s "$PASS_FILE" ]] || die "no PostgreSQL password file $PASS_FILE: run postgres/server.sh up first"
    make_dir
    if bouncer_pid >/dev/null; then info "pgbouncer already running (pid $(bouncer_pid))"; cmd_env; return 0; fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
        die "port $PORT is already in use by another program; choose another with AETHERIUM_PGBOUNCER_PORT"
    fi
    create_db "$POOL_DB"
    write_config
    ulimit -n 4096 2>/dev/null || true  # 1000 clients and the pool's connections
    as_server pgbouncer -d -q "$INI" </dev/null || { tail -n 20 "$LOG" >&2 || true; die "pgbouncer did not start"; }
    local t
    for ((t = 0; t < WAIT_S * 10; t++)); do
        (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
        sleep 0.1
    done
    bouncer_pid >/dev/null || { tail -n 20 "$LOG" >&2 || true; die "pgbouncer is not running"; }
    info "pgbouncer up on 127.0.0.1:$PORT (transaction pooling, $POOL server connections) in front of 127.0.0.1:$PG_PORT"
    cmd_env
}

cmd_down() {
    local pid t
    pid="$(bouncer_pid)" || { info "pgbouncer is not running"; return 0; }
    kill -INT "$pid"   # SIGINT: a fast shutdown
    for ((t = 0; t < WAIT_S * 10; t++)); do
        kill -0 "$pid" 2>/dev/null || { info "pgbouncer stopped"; return 0; }
        sleep 0.1
    done
    die "pgbouncer (pid $pid) did not stop within ${WAIT_S}s"
}

cmd_env() {
    [[ -s "$PASS_FILE" ]] || die "no password file $PASS_FILE: run postgres/server.sh up first"
    printf 'export %s=%q\n' "$ENV_NAME" "postgresql://$PG_ROLE:$(cat "$PASS_FILE")@127.0.0.1:$PORT/$POOL_DB"
}

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    env) cmd_env ;;
    *)
        echo "usage: $0 up|down|env" >&2
        exit 2
        ;;
esac
