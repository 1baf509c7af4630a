#!/usr/bin/env bash
# A real single-host Slurm test cluster (Slurm 22.05, Debian 12): two slurmd "nodes" n1 and n2,
# slurmctld, slurmdbd + MariaDB for sacct, and a private munged.
#
#   slurm/cluster.sh up       install what is missing, start everything, wait until n1/n2 are idle
#   slurm/cluster.sh down     stop the daemons that this script started (and nothing else)
#   slurm/cluster.sh status   which daemons are up, then sinfo
#   slurm/cluster.sh env      print `export SLURM_CONF=...`: eval "$(slurm/cluster.sh env)"
#
# Everything (config, state, logs, pid files, database) lives in one folder,
# ${AETHERIUM_SLURM_DIR:-/tmp/aetherium-slurm}; nothing under /etc is changed. `up` and `down`
# need root (slurmd launches jobs as the submitting user).
set -euo pipefail

# ---- settings: every port and knob in one place (all overridable from the environment) ----
SLURM_DIR="${AETHERIUM_SLURM_DIR:-/tmp/aetherium-slurm}"
CLUSTER_NAME="${AETHERIUM_SLURM_CLUSTER:-aedev}"
SLURMCTLD_PORT="${AETHERIUM_SLURMCTLD_PORT:-16817}"
SLURMDBD_PORT="${AETHERIUM_SLURMDBD_PORT:-16819}"
SLURMD_PORT="${AETHERIUM_SLURMD_PORT:-17011}"          # n1; n2 uses the next port
MARIADB_PORT="${AETHERIUM_MARIADB_PORT:-13306}"
# CPUs per node: the host's core count, at least 2. config_overrides below makes slurmd trust
# these numbers instead of draining a node whose hardware reports less.
NODE_CPUS="${AETHERIUM_SLURM_CPUS:-$(( $(nproc) > 2 ? $(nproc) : 2 ))}"
NODE_MEM_MB="${AETHERIUM_SLURM_MEM_MB:-8000}"
WAIT_S="${AETHERIUM_SLURM_WAIT_S:-60}"    # bound on every wait

for _v in SLURMCTLD_PORT SLURMDBD_PORT SLURMD_PORT MARIADB_PORT NODE_CPUS NODE_MEM_MB WAIT_S; do
    [[ "${!_v}" =~ ^[1-9][0-9]*$ ]] || { echo "cluster.sh: ERROR: $_v='${!_v}' is not a positive integer (see the AETHERIUM_* settings at the top of $0)" >&2; exit 2; }
done
SLURMD_PORT_N1="$SLURMD_PORT"
SLURMD_PORT_N2="$((SLURMD_PORT + 1))"
NODES=(n1 n2)
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd-n1 slurmd-n2)
PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
BINARIES=(slurmctld slurmd slurmdbd sinfo sbatch srun sacct sacctmgr scontrol
          munged munge unmunge mariadbd mariadb mariadb-install-db)

ETC="$SLURM_DIR/etc"
LOG="$SLURM_DIR/log"
RUN="$SLURM_DIR/run"
SLURM_CONF_FILE="$ETC/slurm.conf"
SLURMDBD_CONF_FILE="$ETC/slurmdbd.conf"
DB_PASS_FILE="$ETC/slurmdbd.pass"
MUNGE_DIR="$SLURM_DIR/munge"
MUNGE_SOCKET="$MUNGE_DIR/munge.socket"
MUNGE_KEY="$MUNGE_DIR/munge.key"
MYSQL_DATA="$SLURM_DIR/mysql/data"
MYSQL_RUN="$SLURM_DIR/mysql/run"     # owned by mysql: mariadbd writes its pid file and socket here
MYSQL_SOCKET="$MYSQL_RUN/mysqld.sock"
MYSQL_INIT_MARK="$SLURM_DIR/mysql/initialized"

export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
export SLURM_CONF="$SLURM_CONF_FILE"   # daemons and clients; slurmdbd finds slurmdbd.conf beside it

die() {  # die MESSAGE [LOGFILE]
    echo "cluster.sh: ERROR: $1" >&2
    if [[ $# -ge 2 && -f "$2" ]]; then
        echo "---- last 40 lines of $2 ----" >&2
        tail -n 40 "$2" >&2 || true
        echo "----" >&2
    fi
    exit 1
}

info() { echo "cluster.sh: $*"; }

need_root() {
    [[ "$(id -u)" -eq 0 ]] || die "'$1' must run as root (slurmd launches jobs as other users): sudo $0 $1"
}

pid_file() {
    case "$1" in
        munged) echo "$MUNGE_DIR/munged.pid" ;;
        mariadbd) echo "$RUN/mariadbd.pid" ;;   # a world-readable copy of mariadbd's own
        slurmdbd) echo "$RUN/slurmdbd.pid" ;;
        slurmctld) echo "$RUN/slurmctld.pid" ;;
        slurmd-*) echo "$RUN/slurmd-${1#slurmd-}.pid" ;;
    esac
}

log_file() {
    case "$1" in
        munged) echo "$LOG/munged.log" ;;
        mariadbd) echo "$LOG/mariadb.log" ;;
        slurmdbd) echo "$LOG/slurmdbd.log" ;;
        slurmctld) echo "$LOG/slurmctld.log" ;;
        slurmd-*) echo "$LOG/slurmd-${1#slurmd-}.log" ;;
    esac
}

# Prints the pid of DAEMON if its pid file names a live process with the expected command name
# (so a stale pid file whose number was reused by another process is not mistaken for it).
daemon_pid() {
    local name="$1" file pid comm
    file="$(pid_file "$name")"
    [[ -r "$file" ]] || return 1
    pid="$(tr -dc '0-9' <"$file")"
    [[ -n "$pid" ]] || return 1
    comm="$(cat "/proc/$pid/comm" 2>/dev/null)" || return 1
    [[ "$comm" == "${name%%-*}" ]] || return 1
    echo "$pid"
}

is_up() { daemon_pid "$1" >/dev/null; }

# wait_for SECONDS DESCRIPTION LOGFILE ALIVE CHECK: polls the function CHECK (which bounds itself)
# until it succeeds. Fails with the tail of LOGFILE when SECONDS pass, or as soon as the function
# ALIVE says the daemon being waited for has exited (after a 2 s grace for its pid file).
wait_for() {
    local limit="$1" what="$2" logf="$3" alive="$4" check="$5"
    local deadline=$((SECONDS + limit)) grace=$((SECONDS + 2)) out
    until out="$("$check" 2>&1)"; do
        if ((SECONDS >= grace)) && ! "$alive"; then
            die "$what: the daemon exited during start-up" "$logf"
        fi
        if ((SECONDS >= deadline)); then
            echo "cluster.sh: last output of the check: ${out:-(none)}" >&2
            die "$what: not ready after ${limit}s" "$logf"
        fi
        sleep 0.5
    done
}

alive_munged() { is_up munged; }
alive_slurmdbd() { is_up slurmdbd; }
alive_slurmctld() { is_up slurmctld; }
alive_slurmds() { is_up slurmd-n1 && is_up slurmd-n2; }
MARIADB_PID=""
alive_mariadbd() { [[ -n "$MARIADB_PID" && -d "/proc/$MARIADB_PID" ]]; }

# A port that answers while our daemon for it is not running belongs to someone else.
check_port_free() {
    local port="$1" who="$2"
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        die "port $port (for $who) is already in use by another program; choose another with the AETHERIUM_*_PORT variables at the top of $0"
    fi
}

# write_file PATH MODE CONTENT: replaces PATH only when the content differs; returns 0 if changed.
write_file() {
    local path="$1" mode="$2" content="$3" tmp
    if [[ -f "$path" ]] && [[ "$(cat "$path")" == "$content" ]]; then
        chmod "$mode" "$path"
        return 1
    fi
    tmp="$(mktemp "$path.XXXXXX")"
    printf '%s\n' "$content" >"$tmp"
    chmod "$mode" "$tmp"
    mv -f "$tmp" "$path"
}

# ---------------------------------------------------------------------------------------------
install_packages() {
    local missing=() b
    for b in "${BINARIES[@]}"; do
        command -v "$b" >/dev/null 2>&1 || missing+=("$b")
    done
    ((${#missing[@]} == 0)) && return 0
    info "missing: ${missing[*]}; installing ${PACKAGES[*]} with apt-get"
    apt-get update -q </dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" </dev/null
    for b in "${BINARIES[@]}"; do
        command -v "$b" >/dev/null 2>&1 || die "'$b' is still missing after apt-get install"
    done
}

make_layout() {
    mkdir -p "$ETC" "$LOG" "$RUN" "$SLURM_DIR/state" "$MUNGE_DIR" "$MYSQL_DATA" "$MYSQL_RUN"
    local n
    for n in "${NODES[@]}"; do mkdir -p "$SLURM_DIR/spool/$n"; done
    chmod 755 "$SLURM_DIR" "$ETC" "$LOG" "$RUN" "$SLURM_DIR/spool" "$SLURM_DIR/mysql"
    chmod 700 "$SLURM_DIR/state"
    chmod 755 "$MUNGE_DIR"     # clients (jobs of any user) must reach the socket
    chown -R mysql:mysql "$SLURM_DIR/mysql/data" "$MYSQL_RUN"
    # mariadbd runs as mysql: every folder above its datadir must let that user through.
    if ! runuser -u mysql -- test -w "$MYSQL_RUN"; then
        die "user mysql cannot reach $MYSQL_RUN; put AETHERIUM_SLURM_DIR somewhere every user can traverse (default /tmp/aetherium-slurm)"
    fi
}

write_configs() {
    local host pass changed=1
    host="$(hostname -s 2>/dev/null || hostname)"
    if [[ ! -s "$DB_PASS_FILE" ]]; then
        (umask 077 && od -An -N12 -tx1 /dev/urandom | tr -d ' \n' >"$DB_PASS_FILE")
    fi
    chmod 600 "$DB_PASS_FILE"
    pass="$(cat "$DB_PASS_FILE")"

    if write_file "$SLURM_CONF_FILE" 644 "# Written by slurm/cluster.sh: edits are overwritten by the next 'up'.
ClusterName=$CLUSTER_NAME
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$SLURMCTLD_PORT
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
# Connections to slurmdbd (sacct, sacctmgr, slurmctld) take their munge socket from here.
StateSaveLocation=$SLURM_DIR/state
SlurmdSpoolDir=$SLURM_DIR/spool/%n
SlurmdPidFile=$RUN/slurmd-%n.pid
SlurmdLogFile=$LOG/slurmd-%n.log
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmctldDebug=info
SlurmdDebug=info
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=500
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=5
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$SLURMDBD_PORT
AccountingStoragePass=$MUNGE_SOCKET
JobCompType=jobcomp/none
MailProg=/bin/true
TmpFS=/tmp
MaxArraySize=10001
MaxJobCount=50000
MinJobAge=300
KillWait=5
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=120
ReturnToService=2
NodeName=n[1-2] NodeHostname=$host NodeAddr=127.0.0.1 Port=$SLURMD_PORT_N1-$SLURMD_PORT_N2 CPUs=$NODE_CPUS RealMemory=$NODE_MEM_MB State=UNKNOWN
PartitionName=debug Nodes=n[1-2] Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE"; then
        changed=0
    fi

    # slurmdbd has no -f: it reads slurmdbd.conf from the folder of SLURM_CONF (mode 600, SlurmUser).
    if write_file "$SLURMDBD_CONF_FILE" 600 "# Written by slurm/cluster.sh: edits are overwritten by the next 'up'.
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
DbdHost=$host
DbdAddr=127.0.0.1
DbdPort=$SLURMDBD_PORT
SlurmUser=root
PidFile=$RUN/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$MARIADB_PORT
StorageUser=slurm
StoragePass=$pass
StorageLoc=${CLUSTER_NAME}_acct_db"; then
        changed=0
    fi
    chown root:root "$SLURMDBD_CONF_FILE"
    return "$changed"
}

# ---------------------------------------------------------------------------------------------
munge_ok() { timeout 5 munge -n --socket="$MUNGE_SOCKET" | timeout 5 unmunge --socket="$MUNGE_SOCKET"; }

start_munged() {
    if is_up munged; then info "munged already running"; return; fi
    if [[ ! -s "$MUNGE_KEY" ]]; then
        (umask 077 && dd if=/dev/urandom of="$MUNGE_KEY" bs=1024 count=1 status=none)
    fi
    chmod 400 "$MUNGE_KEY"
    rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock" "$(pid_file munged)"
    # --force: munged runs as root here and /tmp is world-writable (sticky), which it warns about.
    munged --force --socket="$MUNGE_SOCKET" --key-file="$MUNGE_KEY" \
        --pid-file="$(pid_file munged)" --log-file="$LOG/munged.log" \
        --seed-file="$MUNGE_DIR/munged.seed" </dev/null 9>&- >>"$LOG/munged.log" 2>&1 \
        || die "munged failed to start" "$LOG/munged.log"
    wait_for "$WAIT_S" "munged (munge -n | unmunge)" "$LOG/munged.log" alive_munged munge_ok
    info "munged started"
}

mariadb_sql() { timeout 20 mariadb --no-defaults --socket="$MYSQL_SOCKET" -uroot "$@"; }
mariadb_ok() { mariadb_sql -e 'SELECT 1'; }

start_mariadb() {
    if is_up mariadbd; then
        info "mariadbd already running"
    else
        check_port_free "$MARIADB_PORT" mariadbd
        if [[ ! -f "$MYSQL_INIT_MARK" ]]; then
            find "$MYSQL_DATA" -mindepth 1 -delete
            timeout 120 mariadb-install-db --no-defaults --user=mysql --datadir="$MYSQL_DATA" \
                --auth-root-authentication-method=socket --skip-test-db \
                </dev/null 9>&- >>"$LOG/mariadb-install.log" 2>&1 \
                || die "mariadb-install-db failed" "$LOG/mariadb-install.log"
            touch "$MYSQL_INIT_MARK"
        fi
        rm -f "$MYSQL_SOCKET" "$MYSQL_RUN/mariadbd.pid" "$(pid_file mariadbd)"
        # mariadbd does not daemonize: setsid + all fds redirected, so a CI step does not wait on it.
        setsid mariadbd --no-defaults --user=mysql --datadir="$MYSQL_DATA" \
            --socket="$MYSQL_SOCKET" --pid-file="$MYSQL_RUN/mariadbd.pid" \
            --port="$MARIADB_PORT" --bind-address=127.0.0.1 --skip-name-resolve \
            --log-error="$LOG/mariadb.log" --skip-log-bin \
            --innodb-buffer-pool-size=128M --innodb-lock-wait-timeout=900 \
            --innodb-flush-log-at-trx-commit=2 \
            </dev/null 9>&- >>"$LOG/mariadb.log" 2>&1 &
        MARIADB_PID="$!"
        wait_for "$WAIT_S" "mariadbd (SELECT 1 on $MYSQL_SOCKET)" "$LOG/mariadb.log" alive_mariadbd mariadb_ok
        # mariadbd's pid file is private to mysql; `status` run by any user reads this copy.
        cp "$MYSQL_RUN/mariadbd.pid" "$(pid_file mariadbd)"
        chmod 644 "$(pid_file mariadbd)"
        info "mariadbd started"
    fi
    local pass db="${CLUSTER_NAME}_acct_db"
    pass="$(cat "$DB_PASS_FILE")"
    mariadb_sql <<SQL || die "could not create the slurmdbd database user" "$LOG/mariadb.log"
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
GRANT ALL ON \`$db\`.* TO 'slurm'@'127.0.0.1';
FLUSH PRIVILEGES;
SQL
}

slurmdbd_ok() { timeout 10 sacctmgr -n -P show cluster format=cluster; }

start_slurmdbd() {
    if is_up slurmdbd; then info "slurmdbd already running"; return; fi
    check_port_free "$SLURMDBD_PORT" slurmdbd
    slurmdbd </dev/null 9>&- >>"$LOG/slurmdbd.log" 2>&1 || die "slurmdbd failed to start" "$LOG/slurmdbd.log"
    wait_for "$WAIT_S" "slurmdbd (sacctmgr show cluster)" "$LOG/slurmdbd.log" alive_slurmdbd slurmdbd_ok
    info "slurmdbd started"
}

add_cluster() {
    if slurmdbd_ok | grep -qx "$CLUSTER_NAME"; then return; fi
    timeout 30 sacctmgr -i add cluster "$CLUSTER_NAME" >/dev/null \
        || die "sacctmgr add cluster $CLUSTER_NAME failed" "$LOG/slurmdbd.log"
    info "cluster $CLUSTER_NAME added to the accounting database"
}

slurmctld_ok() { timeout 10 scontrol ping | grep -q 'is UP'; }

start_slurmctld() {
    local conf_changed="$1"
    if is_up slurmctld; then
        if [[ "$conf_changed" == yes ]]; then
            info "slurm.conf changed: scontrol reconfigure"
            timeout 30 scontrol reconfigure || die "scontrol reconfigure failed" "$LOG/slurmctld.log"
        else
            info "slurmctld already running"
        fi
        return
    fi
    check_port_free "$SLURMCTLD_PORT" slurmctld
    slurmctld </dev/null 9>&- >>"$LOG/slurmctld.log" 2>&1 || die "slurmctld failed to start" "$LOG/slurmctld.log"
    wait_for "$WAIT_S" "slurmctld (scontrol ping)" "$LOG/slurmctld.log" alive_slurmctld slurmctld_ok
    info "slurmctld started"
}

start_slurmd() {
    local node="$1" port="$2"
    if is_up "slurmd-$node"; then info "slurmd $node already running"; return; fi
    check_port_free "$port" "slurmd $node"
    slurmd -N "$node" </dev/null 9>&- >>"$LOG/slurmd-$node.log" 2>&1 \
        || die "slurmd $node failed to start" "$LOG/slurmd-$node.log"
    info "slurmd $node started"
}

# Both nodes responding (no '*') and usable: idle on a fresh cluster, mixed/allocated when a
# second `up` finds jobs running. A node left down/drained by an earlier run is resumed once.
RESUMED=no
RESUME_AT=0
nodes_ready() {
    local states n st ready=yes stuck=()
    states="$(timeout 10 sinfo -h -N -o '%N %T')" || return 1
    for n in "${NODES[@]}"; do
        st="$(awk -v n="$n" '$1 == n {print $2; exit}' <<<"$states")"
        case "$st" in
            idle | mixed | allocated | completing) ;;
            *'*'*) ready=no ;;                       # not responding (yet)
            *drain* | down*) ready=no; stuck+=("$n") ;;
            *) ready=no ;;
        esac
    done
    if ((${#stuck[@]} > 0)) && [[ "$RESUMED" == no ]] && ((SECONDS >= RESUME_AT)); then
        RESUMED=yes
        for n in "${stuck[@]}"; do
            timeout 10 scontrol update NodeName="$n" State=RESUME || true
        done
    fi
    [[ "$ready" == yes ]]
}

cmd_up() {
    need_root up
    local t0="$EPOCHREALTIME"
    install_packages
    make_layout
    exec 9>"$SLURM_DIR/.lock"
    flock -w "$WAIT_S" 9 || die "another 'cluster.sh up/down' holds $SLURM_DIR/.lock"
    local conf_changed=no
    if write_configs; then conf_changed=yes; fi
    start_munged
    start_mariadb
    start_slurmdbd
    add_cluster
    start_slurmctld "$conf_changed"
    start_slurmd n1 "$SLURMD_PORT_N1"
    start_slurmd n2 "$SLURMD_PORT_N2"
    RESUME_AT=$((SECONDS + 5))
    wait_for "$WAIT_S" "nodes n1 and n2 idle in sinfo" "$LOG/slurmctld.log" alive_slurmds nodes_ready
    for n in "${NODES[@]}"; do
        is_up "slurmd-$n" || die "slurmd $n is not running" "$LOG/slurmd-$n.log"
    done
    timeout 10 sinfo -N -l || true
    local ms=$(( (${EPOCHREALTIME/./} - ${t0/./}) / 1000 ))
    printf 'cluster.sh: cluster %s up in %d.%01d s; use it with:\n' "$CLUSTER_NAME" "$((ms / 1000))" "$((ms % 1000 / 100))"
    cmd_env
}

# stop_daemon NAME: TERM via its pid file, KILL after WAIT_S/2 seconds.
stop_daemon() {
    local name="$1" pid i
    pid="$(daemon_pid "$name")" || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < WAIT_S; i++)); do
        [[ -d "/proc/$pid" ]] || { info "$name stopped"; return 0; }
        sleep 0.5
    done
    echo "cluster.sh: $name (pid $pid) ignored SIGTERM; sending SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
}

cmd_down() {
    need_root down
    [[ -d "$SLURM_DIR" ]] || { info "nothing to stop: $SLURM_DIR does not exist"; return 0; }
    exec 9>"$SLURM_DIR/.lock"
    flock -w "$WAIT_S" 9 || die "another 'cluster.sh up/down' holds $SLURM_DIR/.lock"
    if is_up slurmctld; then
        # stops slurmctld and every slurmd it knows; the pid files below catch the rest
        timeout 20 scontrol shutdown >/dev/null 2>&1 || true
    fi
    local d
    for d in slurmd-n1 slurmd-n2 slurmctld slurmdbd mariadbd munged; do
        stop_daemon "$d"
    done
    info "cluster stopped (state kept in $SLURM_DIR; rm -rf it for a clean slate)"
}

cmd_status() {
    local d pid all=0
    for d in "${DAEMONS[@]}"; do
        if pid="$(daemon_pid "$d")"; then
            printf '%-10s up (pid %s)\n' "$d" "$pid"
        else
            printf '%-10s down\n' "$d"
            all=1
        fi
    done
    if is_up slurmctld; then
        timeout 10 sinfo || all=1
    fi
    return "$all"
}

cmd_env() {
    printf 'export SLURM_CONF=%q\n' "$SLURM_CONF_FILE"
}

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    env) cmd_env ;;
    *)
        echo "usage: $0 up|down|status|env" >&2
        exit 2
        ;;
esac
