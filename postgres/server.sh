#!/usr/bin/env bash
# A private PostgreSQL server for the central-store tests and for trying `monitoring.central`
# by hand (Debian's postgresql package; PostgreSQL 15 on Debian 12).
#
#   postgres/server.sh up       install what is missing, initdb once, start, create the role and database
#   postgres/server.sh down     stop the server this script started (and nothing else)
#   postgres/server.sh status   up or down, and the URL's host and port
#   postgres/server.sh env      print `export AETHERIUM_TEST_PG=postgresql://...`: eval "$(postgres/server.sh env)"
#   postgres/server.sh url      print the URL alone (password included: a private test server)
#
# A second, small server for the lab-scale tests (.ci/run starts one):
#   AETHERIUM_PG_DIR=/tmp/aetherium-pg-small AETHERIUM_PG_PORT=15433 AETHERIUM_PG_MAX_CONNECTIONS=20 \
#   AETHERIUM_PG_SENDER_LIMIT=8 AETHERIUM_PG_ENV=AETHERIUM_TEST_PG_SMALL postgres/server.sh up
# AETHERIUM_PG_SENDER_LIMIT=N also creates the role <role>_sender (same password, CONNECTION LIMIT N,
# acting as <role>): what docs/CENTRAL.md advises a lab to give its nodes' senders; `env` then
# prints its URL as ${AETHERIUM_PG_ENV}_SENDER too.
#
# Everything (data folder, socket, log, password) lives in ${AETHERIUM_PG_DIR:-/tmp/aetherium-pg};
# nothing under /etc is changed. The server listens on 127.0.0.1 only, on its own port, and
# asks for a password (scram-sha-256) over TCP, so a wrong password is refused as on a site's
# server. initdb and postgres refuse to run as root: as root, the server runs as the OS user
# ${AETHERIUM_PG_OS_USER:-postgres} (the Debian package creates it); otherwise as the caller.
set -euo pipefail

SCRIPT=server.sh
# shellcheck source=postgres/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"   # PG_DIR, PG_PORT, PG_DB, PG_ROLE, OS_USER, RUN, PASS_FILE; die, info, as_server, psql_admin, create_db

# ---- settings of the server alone (overridable from the environment) ----
WAIT_S="${AETHERIUM_PG_WAIT_S:-60}"
MAX_CONN="${AETHERIUM_PG_MAX_CONNECTIONS:-200}"
SENDER_LIMIT="${AETHERIUM_PG_SENDER_LIMIT:-}"
ENV_NAME="${AETHERIUM_PG_ENV:-AETHERIUM_TEST_PG}"
PACKAGES=(postgresql postgresql-client)

[[ "$WAIT_S" =~ ^[1-9][0-9]*$ ]] || { echo "server.sh: ERROR: AETHERIUM_PG_WAIT_S='$WAIT_S' is not a positive integer" >&2; exit 2; }
[[ "$MAX_CONN" =~ ^[1-9][0-9]*$ ]] || { echo "server.sh: ERROR: AETHERIUM_PG_MAX_CONNECTIONS='$MAX_CONN' is not a positive integer" >&2; exit 2; }
[[ -z "$SENDER_LIMIT" || "$SENDER_LIMIT" =~ ^[1-9][0-9]*$ ]] || { echo "server.sh: ERROR: AETHERIUM_PG_SENDER_LIMIT='$SENDER_LIMIT' is not a positive integer" >&2; exit 2; }
[[ "$ENV_NAME" =~ ^[A-Z_][A-Z0-9_]*$ ]] || { echo "server.sh: ERROR: AETHERIUM_PG_ENV='$ENV_NAME' must be an upper-case variable name" >&2; exit 2; }

DATA="$PG_DIR/data"
LOG="$PG_DIR/log/postgres.log"       # the server's own log (written by the server's user)
CTL_LOG="$PG_DIR/log/server-sh.log"  # initdb and pg_ctl output (written by this script)
SENDER_FILE="$PG_DIR/sender-role"  # names the sender role, once created

# The folder of initdb/pg_ctl/postgres: Debian keeps them out of PATH, under /usr/lib/postgresql/<major>/bin.
find_bindir() {
    local d
    if [[ -n "${AETHERIUM_PG_BIN:-}" ]]; then echo "$AETHERIUM_PG_BIN"; return 0; fi
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        [[ -x "$d/initdb" && -x "$d/pg_ctl" ]] && { echo "$d"; return 0; }
    done
    command -v pg_ctl >/dev/null 2>&1 && { dirname "$(command -v pg_ctl)"; return 0; }
    return 1
}

install_packages() {
    find_bindir >/dev/null && command -v psql >/dev/null 2>&1 && return 0
    [[ "$(id -u)" -eq 0 ]] || die "PostgreSQL is not installed and installing needs root: sudo apt-get install ${PACKAGES[*]} (or set AETHERIUM_PG_BIN to the folder of initdb and pg_ctl)"
    info "installing ${PACKAGES[*]} with apt-get"
    apt-get update -q </dev/null
    # (the package may also set up Debian's own cluster on port 5432: ours is separate from it)
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" </dev/null
    find_bindir >/dev/null || die "initdb/pg_ctl still missing after apt-get install"
}

server_pid() {  # the postmaster's pid, if its pid file names a live postgres
    local pid comm
    [[ -r "$DATA/postmaster.pid" ]] || return 1
    pid="$(head -n 1 "$DATA/postmaster.pid" | tr -dc '0-9')"
    [[ -n "$pid" ]] || return 1
    comm="$(cat "/proc/$pid/comm" 2>/dev/null)" || return 1
    [[ "$comm" == postgres* ]] || return 1
    echo "$pid"
}

is_up() { server_pid >/dev/null; }

make_layout() {
    mkdir -p "$PG_DIR" "$DATA" "$RUN" "$(dirname "$LOG")"
    chmod 755 "$PG_DIR"
    if [[ ! -s "$PASS_FILE" ]]; then
        (umask 077 && od -An -N12 -tx1 /dev/urandom | tr -d ' \n' >"$PASS_FILE")
    fi
    chmod 600 "$PASS_FILE"
    if [[ "$(id -u)" -eq 0 ]]; then
        getent passwd "$OS_USER" >/dev/null || die "OS user '$OS_USER' does not exist; set AETHERIUM_PG_OS_USER to a non-root user (initdb refuses root)"
        chown "$OS_USER" "$DATA" "$RUN" "$(dirname "$LOG")"
        [[ ! -e "$LOG" ]] || chown "$OS_USER" "$LOG"
        as_server test -w "$RUN" || die "user $OS_USER cannot reach $RUN; put AETHERIUM_PG_DIR somewhere every user can traverse (default /tmp/aetherium-pg)"
    fi
    chmod 700 "$DATA"
}

init_cluster() {
    [[ -f "$DATA/PG_VERSION" ]] && return 0
    local bindir="$1" superuser
    superuser="$(as_server id -un)"
    info "initdb $DATA (superuser $superuser: local socket only, peer authentication)"
    as_server "$bindir/initdb" -D "$DATA" -U "$superuser" -E UTF8 --locale=C.UTF-8 \
        --auth-local=peer --auth-host=scram-sha-256 </dev/null 9>&- >>"$CTL_LOG" 2>&1 \
        || die "initdb failed" "$CTL_LOG"
    # TCP on 127.0.0.1 with a password; the Unix socket (in $RUN, mode 700) for this script alone.
    as_server tee "$DATA/pg_hba.conf" >/dev/null <<HBA
# Written by postgres/server.sh.
local   all   all                  peer
host    all   all   127.0.0.1/32   scram-sha-256
HBA
}

start_server() {
    local bindir="$1"
    if is_up; then info "postgres already running (pid $(server_pid))"; return 0; fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$PG_PORT") 2>/dev/null; then
        die "port $PG_PORT is already in use by another program; choose another with AETHERIUM_PG_PORT"
    fi
    rm -f "$DATA/postmaster.pid"
    as_server "$bindir/pg_ctl" -D "$DATA" -l "$LOG" -w -t "$WAIT_S" \
        -o "-p $PG_PORT -k $RUN -c listen_addresses=127.0.0.1 -c password_encryption=scram-sha-256 -c fsync=off -c synchronous_commit=off -c max_connections=$MAX_CONN" \
        start </dev/null 9>&- >>"$CTL_LOG" 2>&1 || { tail -n 5 "$CTL_LOG" >&2; die "postgres did not start within ${WAIT_S}s" "$LOG"; }
    info "postgres started on 127.0.0.1:$PG_PORT"
}

login_role() {  # login_role NAME [SQL ...]: the role NAME, with the password file's password, then SQL
    local name="$1" pass
    shift
    pass="$(cat "$PASS_FILE")"    # hex digits only: safe inside the SQL string below
    psql_admin <<SQL || die "could not create role $name" "$LOG"
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$name') THEN
    CREATE ROLE $name LOGIN;
  END IF;
END \$\$;
ALTER ROLE $name LOGIN PASSWORD '$pass';
$(printf '%s\n' "$@")
SQL
}

create_role_and_db() {
    login_role "$PG_ROLE"
    create_db "$PG_DB" "$LOG"
}

create_sender_role() {  # <role>_sender: CONNECTION LIMIT $SENDER_LIMIT, acting as <role> (owns what it creates)
    [[ -n "$SENDER_LIMIT" ]] || return 0
    local sender="${PG_ROLE}_sender"
    login_role "$sender" "ALTER ROLE $sender CONNECTION LIMIT $SENDER_LIMIT;" "GRANT $PG_ROLE TO $sender;" \
        "ALTER ROLE $sender SET role = '$PG_ROLE';"
    echo "$sender" >"$SENDER_FILE"
    info "role $sender: at most $SENDER_LIMIT connections, acting as $PG_ROLE"
}

url() {  # url [ROLE]
    printf 'postgresql://%s:%s@127.0.0.1:%s/%s' "${1:-$PG_ROLE}" "$(cat "$PASS_FILE")" "$PG_PORT" "$PG_DB"
}

cmd_up() {
    local t0="$SECONDS" bindir
    install_packages
    bindir="$(find_bindir)"
    make_layout
    exec 9>"$PG_DIR/.lock"
    flock -w "$WAIT_S" 9 || die "another 'server.sh up/down' holds $PG_DIR/.lock"
    init_cluster "$bindir"
    start_server "$bindir"
    create_role_and_db
    create_sender_role
    info "ready in $((SECONDS - t0)) s; use it with:"
    cmd_env
}

cmd_down() {
    [[ -d "$DATA" ]] || { info "nothing to stop: $DATA does not exist"; return 0; }
    exec 9>"$PG_DIR/.lock"
    flock -w "$WAIT_S" 9 || die "another 'server.sh up/down' holds $PG_DIR/.lock"
    is_up || { info "postgres is not running"; return 0; }
    as_server "$(find_bindir)/pg_ctl" -D "$DATA" -m fast -w -t "$WAIT_S" stop </dev/null 9>&- >>"$CTL_LOG" 2>&1 \
        || die "pg_ctl stop failed" "$CTL_LOG"
    info "postgres stopped (data kept in $DATA; rm -rf $PG_DIR for a clean slate)"
}

cmd_status() {
    if is_up; then
        echo "postgres up (pid $(server_pid)) on 127.0.0.1:$PG_PORT, database $PG_DB, role $PG_ROLE"
    else
        echo "postgres down ($DATA)"
        return 1
    fi
}

cmd_env() {
    [[ -s "$PASS_FILE" ]] || die "no password file $PASS_FILE: run '$0 up' first"
    printf 'export %s=%q\n' "$ENV_NAME" "$(url)"
    if [[ -s "$SENDER_FILE" ]]; then
        printf 'export %s_SENDER=%q\n' "$ENV_NAME" "$(url "$(cat "$SENDER_FILE")")"
    fi
}

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    env) cmd_env ;;
    url) [[ -s "$PASS_FILE" ]] || die "no password file $PASS_FILE: run '$0 up' first"; url; echo ;;
    *)
        echo "usage: $0 up|down|status|env|url" >&2
        exit 2
        ;;
esac
