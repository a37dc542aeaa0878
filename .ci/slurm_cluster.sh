#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for tests/launch/test_slurm_requeue.py:
#
#   .ci/slurm_cluster.sh start    # install Debian's packages if missing, configure, start
#   .ci/slurm_cluster.sh stop     # stop the daemons that start began
#
# Slurm 22.05 from Debian (slurmctld, slurmd, slurm-client, munge), one node with this
# machine's CPUs, no cgroups (proctrack/linuxproc, task/none), run as root. A cluster that
# already answers `sinfo` is used as it is; a slurm.conf that this script did not write is
# never replaced. Where it cannot start one (not root, no apt-get), start says why and exits
# 0: the test then skips with its reason.
set -euo pipefail

CONF=/etc/slurm/slurm.conf
MARK="# written by adaact-dist .ci/slurm_cluster.sh"
STATE=/var/lib/adaact-slurm

say() { echo "slurm_cluster: $*" >&2; }

# A node that takes jobs (idle, mixed, allocated, completing).
answering() { timeout 10 sinfo --noheader --format=%t 2>/dev/null | grep -qE '^(idle|mix|alloc|comp)'; }

install() {
    command -v apt-get >/dev/null || {
        say "no apt-get to install Slurm with: no cluster"
        exit 0
    }
    say "installing slurmctld slurmd slurm-client munge"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
}

configure() {
    local host cpus
    host=$(hostname -s)
    cpus=$(nproc --all)
    mkdir -p /etc/slurm "$STATE/ctld" "$STATE/d" /var/log/slurm
    cat >"$CONF" <<EOF
$MARK
ClusterName=adaact-ci
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN
PartitionName=ci Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

start() {
    if command -v sinfo >/dev/null && answering; then
        say "a cluster already answers sinfo: using it"
        exit 0
    fi
    if (($(id -u) != 0)); then
        say "not root: cannot install or start slurmctld/slurmd here"
        exit 0
    fi
    if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null ||
        ! command -v munged >/dev/null; then
        install
    fi
    if [[ -f $CONF ]] && ! grep -qxF "$MARK" "$CONF"; then
        say "$CONF exists and was not written here: not touching it"
        exit 0
    fi
    configure
    if [[ ! -s /etc/munge/munge.key ]]; then
        mungekey --create --keyfile=/etc/munge/munge.key
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
    mkdir -p /run/munge
    chown munge:munge /run/munge
    if ! pgrep -x munged >/dev/null; then
        runuser -u munge -- /usr/sbin/munged
        touch "$STATE/munged.ours"
    fi
    slurmctld
    slurmd
    local waited=0
    until answering; do
        ((waited < 60)) || {
            say "started, but sinfo does not answer after 60 s; see /var/log/slurm/"
            exit 1
        }
        sleep 1
        waited=$((waited + 1))
    done
    say "up: $(sinfo --noheader --format='%P %D node(s) %c CPUs %t')"
}

# Ends the daemons that start began (their pid files), nothing else.
stop() {
    local name pid
    for name in slurmd slurmctld; do
        if [[ -f $STATE/$name.pid ]]; then
            pid=$(<"$STATE/$name.pid")
            kill "$pid" 2>/dev/null && say "stopped $name ($pid)"
            rm -f "$STATE/$name.pid"
        fi
    done
    if [[ -f $STATE/munged.ours && -f /run/munge/munged.pid ]]; then
        pid=$(</run/munge/munged.pid)
        kill "$pid" 2>/dev/null && say "stopped munged ($pid)"
        rm -f "$STATE/munged.ours"
    fi
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    *)
        echo "usage: .ci/slurm_cluster.sh start|stop" >&2
        exit 2
        ;;
esac
