# Sourced by postgres/server.sh and postgres/pgbouncer.sh (set SCRIPT first): the settings both
# read from the environment, their checks, and the helpers both use against the private server.

# ---- settings (all overridable from the environment) ----
PG_DIR="${AETHERIUM_PG_DIR:-/tmp/aetherium-pg}"
PG_PORT="${AETHERIUM_PG_PORT:-15432}"
PG_DB="${AETHERIUM_PG_DB:-aetherium}"
PG_ROLE="${AETHERIUM_PG_ROLE:-aetherium}"
OS_USER="${AETHERIUM_PG_OS_USER:-postgres}"

[[ "$PG_PORT" =~ ^[1-9][0-9]*$ ]] || { echo "$SCRIPT: ERROR: AETHERIUM_PG_PORT='$PG_PORT' is not a port number" >&2; exit 2; }
for _v in PG_DB PG_ROLE; do
    [[ "${!_v}" =~ ^[a-z_][a-z0-9_]*$ ]] || { echo "$SCRIPT: ERROR: $_v='${!_v}' must be a plain lower-case SQL name" >&2; exit 2; }
done

RUN="$PG_DIR/run"           # the server's Unix socket (used by these scripts only) and postmaster's lock
PASS_FILE="$PG_DIR/password"

die() {  # die MESSAGE [LOGFILE]
    echo "$SCRIPT: ERROR: $1" >&2
    if [[ $# -ge 2 && -f "$2" ]]; then
        echo "---- last 30 lines of $2 ----" >&2
        tail -n 30 "$2" >&2 || true
        echo "----" >&2
    fi
    exit 1
}

info() { echo "$SCRIPT: $*"; }

# as_server CMD...: run CMD as the server's OS user (root cannot run initdb, postgres or pgbouncer).
as_server() {
    if [[ "$(id -u)" -eq 0 ]]; then
        runuser -u "$OS_USER" -- "$@"
    else
        "$@"
    fi
}

psql_admin() {  # psql as the superuser, over the private Unix socket
    as_server timeout 20 "$(command -v psql)" -X -q -v ON_ERROR_STOP=1 -h "$RUN" -p "$PG_PORT" -d postgres "$@"
}

create_db() {  # create_db NAME [LOGFILE]: the database NAME owned by the role, unless it exists
    if [[ "$(psql_admin -tA -c "SELECT 1 FROM pg_database WHERE datname = '$1'")" != 1 ]]; then
        psql_admin -c "CREATE DATABASE $1 OWNER $PG_ROLE" || die "could not create database $1" "${2:-}"
        info "database $1 created (owner $PG_ROLE)"
    fi
}
