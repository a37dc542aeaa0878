#!/usr/bin/env bash
# Emulated hosts on this machine, for tests/launch/test_multinode.py:
#
#   .ci/emulated_hosts.sh start [N]   # hosts node1..nodeN (default 2), each with its own sshd
#   .ci/emulated_hosts.sh stop        # remove everything that start made, nothing else
#   .ci/emulated_hosts.sh status      # exit 0 where the hosts are up, else say why
#
# Host K is the network namespace nodeK, address 192.0.2.K/24 on its eth0, the other end of
# which (adaact-vK) is a port of the bridge adaact-br0 in the namespace adaact-switch. That
# namespace has no address at all, and the root namespace holds none of it: a bridge there
# would answer ARP for the root's own addresses (a machine that sits on 192.0.2.0/24 itself,
# as CI machines may, then takes the hosts' packets and routes its answers out of eth0). The
# hosts have no route out and the root namespace none to them; run whatever talks to them in
# one of them, as on a cluster from its first node:
#   ip netns exec node1 unshare --uts sh -c 'hostname node1 && exec "$@"' sh CMD...
# The hosts share this machine's filesystem (the repository and the virtual environment are at
# the same path everywhere) and its CPUs.
#
# Inside host K (`ip netns exec nodeK` binds /etc/netns/nodeK/* over /etc/*):
#   /etc/hosts      every nodeJ -> 192.0.2.J (and localhost), so names resolve both ways
#   /etc/nsswitch.conf  the machine's, with names looked up in /etc/hosts only (no resolver
#                   answers here: torch's c10d store would print err=-3 on every rank)
#   /etc/ssh/       the client config made for the test: its identity, its known_hosts (the
#                   hosts' keys, checked strictly), batch mode. Every ssh run on a host uses it
#                   with nothing on its command line: DeepSpeed's `ssh HOST hostname` check and
#                   pdsh's ssh alike. The machine's /etc/ssh is never read or changed, nor its
#                   ~/.ssh, which ssh would read first: where one exists, the tests mask it for
#                   their launch (tests/launch/hosts.py) and the check below passes `-F`.
#   sshd            `sshd -D -f $STATE/nodeK/sshd_config` on 192.0.2.K:22 in a UTS namespace of
#                   its own (hostname nodeK, which every session it starts inherits); keys only,
#                   the test's authorized_keys, no PAM.
# Where the hosts cannot be made (not root, no `ip netns`, no sshd/pdsh and no apt-get to
# install them), start says why and exits 0: the tests then skip with the reason.
set -euo pipefail

STATE=/var/lib/adaact-hosts
BRIDGE=adaact-br0
SWITCH=adaact-switch
NET=192.0.2
MADE=$STATE/made # one line per thing start made, undone in reverse order by stop

say() { echo "emulated_hosts: $*" >&2; }
record() { echo "$*" >>"$MADE"; }

# Exits 0 with a reason where this machine cannot host the emulated nodes.
preflight() {
    if (($(id -u) != 0)); then
        say "not root: cannot create network namespaces or start sshd; no hosts"
        exit 0
    fi
    local tool
    for tool in ip unshare setsid; do
        command -v "$tool" >/dev/null || {
            say "no $tool: no hosts"
            exit 0
        }
    done
    local probe=adaact-probe-$$
    if ! ip netns add "$probe" 2>/dev/null; then
        say "\`ip netns add\` fails here (no network namespaces): no hosts"
        exit 0
    fi
    ip netns del "$probe"
}

install() {
    command -v /usr/sbin/sshd >/dev/null && command -v pdsh >/dev/null && command -v ssh-keygen >/dev/null &&
        return 0
    command -v apt-get >/dev/null || {
        say "no sshd/pdsh and no apt-get to install them with: no hosts"
        exit 0
    }
    say "installing openssh-server openssh-client pdsh"
    export DEBIAN_FRONTEND=noninteractive
    # The package would start its own sshd on port 22 of this machine where no policy-rc.d
    # forbids it: one that does is in place for the install and only then.
    local policy=/usr/sbin/policy-rc.d ours=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 0755 "$policy"
        ours=1
    fi
    local status=0
    {
        apt-get update -qq &&
            apt-get install -y -qq --no-install-recommends openssh-server openssh-client pdsh >/dev/null
    } || status=$?
    ((ours == 0)) || rm -f "$policy"
    if ((status != 0)); then
        say "apt-get could not install openssh-server/pdsh (status $status): no hosts"
        exit 0
    fi
}

up() { # N: every host's sshd alive and host 1 reaching every host by name over ssh
    local k pid
    for ((k = 1; k <= $1; k++)); do
        pid=$(cat "$STATE/node$k/sshd.pid" 2>/dev/null) || return 1
        [[ $(cat "/proc/$pid/comm" 2>/dev/null) == sshd ]] || return 1
        [[ $(ip netns exec node1 ssh -F /etc/ssh/ssh_config "node$k" hostname 2>/dev/null) == "node$k" ]] ||
            return 1
    done
}

write_host_files() { # N
    local n=$1 k
    {
        echo "127.0.0.1 localhost"
        echo "::1 localhost ip6-localhost ip6-loopback"
        for ((k = 1; k <= n; k++)); do echo "$NET.$k node$k"; done
    } >"$STATE/hosts"
    : >"$STATE/known_hosts"
    for ((k = 1; k <= n; k++)); do
        mkdir -p "$STATE/node$k"
        ssh-keygen -q -t ed25519 -N '' -C "node$k" -f "$STATE/node$k/ssh_host_ed25519_key"
        echo "node$k,$NET.$k $(cut -d' ' -f1,2 "$STATE/node$k/ssh_host_ed25519_key.pub")" \
            >>"$STATE/known_hosts"
        cat >"$STATE/node$k/sshd_config" <<EOF
ListenAddress $NET.$k:22
HostKey $STATE/node$k/ssh_host_ed25519_key
PidFile $STATE/node$k/sshd.pid
AuthorizedKeysFile $STATE/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
UseDNS no
PrintMotd no
PrintLastLog no
X11Forwarding no
AllowAgentForwarding no
AllowTcpForwarding no
MaxStartups 200
MaxSessions 200
LogLevel INFO
EOF
    done
    ssh-keygen -q -t ed25519 -N '' -C adaact-hosts -f "$STATE/id_ed25519"
    cp "$STATE/id_ed25519.pub" "$STATE/authorized_keys"
    cat >"$STATE/ssh_config" <<EOF
# The emulated hosts' ssh client config (.ci/emulated_hosts.sh): their /etc/ssh/ssh_config.
Host *
    User root
    IdentityFile $STATE/id_ed25519
    IdentitiesOnly yes
    UserKnownHostsFile $STATE/known_hosts
    GlobalKnownHostsFile /dev/null
    StrictHostKeyChecking yes
    CheckHostIP no
    BatchMode yes
    PasswordAuthentication no
    ConnectTimeout 10
    LogLevel ERROR
EOF
}

start() {
    local n=${1:-2} k name
    if [[ ! $n =~ ^[0-9]+$ ]] || ((n < 1 || n > 250)); then
        echo "usage: .ci/emulated_hosts.sh start [N], 1 <= N <= 250" >&2
        exit 2
    fi
    preflight
    if [[ -f $STATE/count ]]; then
        local had
        had=$(<"$STATE/count")
        if ((had == n)) && up "$n"; then
            say "$n hosts already up"
            exit 0
        fi
        say "the $had host(s) of an earlier start are not what is asked or not all up: replacing them"
        stop
    fi
    for name in "$SWITCH" $(seq -f 'node%g' "$n"); do
        if [[ -e /run/netns/$name || -e /etc/netns/$name ]]; then
            say "namespace $name exists and was not made here: no hosts"
            exit 0
        fi
    done
    install
    local began=$SECONDS
    mkdir -p "$STATE"
    chmod 0700 "$STATE"
    : >"$MADE"
    echo "$n" >"$STATE/count"
    write_host_files "$n"
    if [[ ! -d /run/sshd ]]; then # sshd's privilege separation directory
        mkdir -m 0755 /run/sshd
        record dir /run/sshd
    fi
    if [[ ! -d /etc/netns ]]; then
        mkdir /etc/netns
        record dir /etc/netns
    fi

    ip netns add "$SWITCH"
    record netns "$SWITCH"
    ip netns exec "$SWITCH" sysctl -qw net.ipv6.conf.default.disable_ipv6=1 || true
    ip -n "$SWITCH" link add "$BRIDGE" type bridge
    ip -n "$SWITCH" link set "$BRIDGE" up
    for ((k = 1; k <= n; k++)); do
        mkdir -p "/etc/netns/node$k/ssh"
        record tree "/etc/netns/node$k"
        cp "$STATE/hosts" "/etc/netns/node$k/hosts"
        # Names from /etc/hosts alone: the hosts cannot reach the machine's resolver, and torch's
        # store looks up its peers' IPv4-mapped IPv6 addresses, which /etc/hosts never matches.
        sed 's/^hosts:.*/hosts: files/' /etc/nsswitch.conf >"/etc/netns/node$k/nsswitch.conf"
        cp "$STATE/ssh_config" "/etc/netns/node$k/ssh/ssh_config"
        ip netns add "node$k"
        record netns "node$k"
        ip -n "$SWITCH" link add "adaact-v$k" type veth peer name eth0 netns "node$k"
        ip -n "$SWITCH" link set "adaact-v$k" master "$BRIDGE" up
        ip -n "node$k" link set lo up
        ip -n "node$k" addr add "$NET.$k/24" dev eth0
        ip -n "node$k" link set eth0 up
        record sshd "node$k"
        # shellcheck disable=SC2016 # the inner shell expands its own arguments
        ip netns exec "node$k" setsid -f unshare --uts /bin/sh -c \
            'hostname "$1" && exec /usr/sbin/sshd -D -f "$2" -E "$3"' \
            sh "node$k" "$STATE/node$k/sshd_config" "$STATE/node$k/sshd.log" </dev/null >/dev/null 2>&1
    done
    until up "$n"; do
        ((SECONDS - began < 60)) || {
            say "started, but node1 does not reach every host by ssh after 60 s; see $STATE/node*/sshd.log"
            exit 1
        }
        sleep 0.5
    done
    say "up in $((SECONDS - began)) s: node1..node$n at $NET.1..$n, sshd each; state in $STATE"
}

kill_all() { # SIGNAL PID...: signal the pids that still exist
    local signal=$1 pid
    shift
    for pid in "$@"; do kill "-$signal" "$pid" 2>/dev/null || true; done
}

# Undo what start recorded, newest first; then the state dir.
stop() {
    [[ -f $MADE ]] || {
        [[ -d $STATE ]] && rm -rf "$STATE"
        say "no hosts to stop"
        return 0
    }
    local kind what pid pids waited signal
    while read -r kind what; do
        case $kind in
            sshd)
                # The host's sshd, then whatever its sessions left running in the host.
                pid=$(cat "$STATE/$what/sshd.pid" 2>/dev/null || true)
                if [[ -n $pid && $(cat "/proc/$pid/comm" 2>/dev/null) == sshd ]]; then
                    kill "$pid" 2>/dev/null || true
                fi
                for signal in TERM KILL; do
                    mapfile -t pids < <(ip netns pids "$what" 2>/dev/null || true)
                    ((${#pids[@]} > 0)) || break
                    kill_all "$signal" "${pids[@]}"
                    for ((waited = 0; waited < 20; waited++)); do
                        [[ -z $(ip netns pids "$what" 2>/dev/null) ]] && break
                        sleep 0.25
                    done
                done
                ;;
            netns) ip netns del "$what" 2>/dev/null || true ;; # its links go with it
            tree) rm -rf "$what" ;;
            dir) rmdir "$what" 2>/dev/null || true ;;
        esac
    done < <(tac "$MADE")
    rm -rf "$STATE"
    say "stopped: hosts, links, sshd and state removed"
}

status() {
    [[ -f $STATE/count ]] || {
        say "no hosts: \`.ci/emulated_hosts.sh start\` makes them"
        exit 1
    }
    up "$(<"$STATE/count")" || {
        say "hosts made but not all reachable by ssh from node1"
        exit 1
    }
    say "$(<"$STATE/count") hosts up"
}

case ${1:-} in
    start) start "${2:-2}" ;;
    stop) stop ;;
    status) status ;;
    *)
        echo "usage: .ci/emulated_hosts.sh start [N] | stop | status" >&2
        exit 2
        ;;
esac
