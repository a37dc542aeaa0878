#!/usr/bin/env bash
# Train on several nodes with torchrun: run this on every node with the same arguments,
# except the node rank.
#
#   launch/torchrun_multinode.sh --nnodes 2 --node-rank 0 --master-addr node1 \
#       --config a2_resnet50 --set data.root=/data/imagenet-wds    # on node1, then node-rank 1 on node2
#
# Launcher options, each also read from the environment (NNODES, NPROC_PER_NODE, NODE_RANK,
# MASTER_ADDR, MASTER_PORT, RDZV_ID, MAX_RESTARTS); an option wins over its variable:
#   --nnodes N          nodes; default 1 (torchrun --standalone: no master needed)
#   --nproc-per-node P  ranks per node; default: one per visible GPU ("gpu"), 1 without GPUs
#   --node-rank R       this node's rank, 0 on the master: a static rendezvous with fixed
#                       ranks. Without it the nodes meet at the master through torchrun's c10d
#                       rendezvous, in any order, and ranks are assigned as they arrive
#   --max-restarts N    torchrun restarts every rank after a failure, up to N times; each
#                       restart resumes from the newest checkpoint. Default 0
#   --master-addr HOST  the master node; required with more than one node
#   --master-port PORT  default 29500
#   --rdzv-id ID        the c10d rendezvous name, the same on every node; default adaact
# The other arguments go to launch/train_imagenet.py; --config is required.
# ADAACT_DRY_RUN=1 prints the torchrun command, shell-quoted, instead of running it.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

fail() {
    echo "torchrun_multinode: $1" >&2
    echo "usage: launch/torchrun_multinode.sh [--nnodes N] [--nproc-per-node P] [--node-rank R]" \
        "[--master-addr HOST] [--master-port PORT] [--rdzv-id ID] [--max-restarts N]" \
        "--config NAME [--set KEY=VALUE ...]" >&2
    exit 2
}

require_count() { # OPTION VALUE MINIMUM
    if [[ ! $2 =~ ^[0-9]+$ ]] || ((10#$2 < $3)); then
        fail "$1 must be an integer >= $3, not '$2'"
    fi
}

nnodes=${NNODES:-1}
nproc=${NPROC_PER_NODE:-}
node_rank=${NODE_RANK:-}
master_addr=${MASTER_ADDR:-}
master_port=${MASTER_PORT:-29500}
rdzv_id=${RDZV_ID:-adaact}
max_restarts=${MAX_RESTARTS:-0}
train_args=()
has_config=0
while (($# > 0)); do
    case $1 in
        --nnodes | --nproc-per-node | --node-rank | --master-addr | --master-port | --rdzv-id | --max-restarts)
            (($# >= 2)) || fail "$1 needs a value"
            case $1 in
                --nnodes) nnodes=$2 ;;
                --nproc-per-node) nproc=$2 ;;
                --node-rank) node_rank=$2 ;;
                --master-addr) master_addr=$2 ;;
                --master-port) master_port=$2 ;;
                --rdzv-id) rdzv_id=$2 ;;
                --max-restarts) max_restarts=$2 ;;
            esac
            shift 2
            ;;
        *)
            [[ $1 == --config || $1 == --config=* ]] && has_config=1
            train_args+=("$1")
            shift
            ;;
    esac
done

((has_config)) || fail "--config NAME is required (a name in configs/ or a YAML path)"
if [[ -z $nproc ]]; then
    nproc=1
    if nvidia-smi --list-gpus >/dev/null 2>&1; then
        nproc=gpu # torchrun counts the GPUs that CUDA_VISIBLE_DEVICES leaves visible
    fi
fi
require_count --nnodes "$nnodes" 1
[[ $nproc == gpu ]] || require_count --nproc-per-node "$nproc" 1
require_count --master-port "$master_port" 1
require_count --max-restarts "$max_restarts" 0

command=(torchrun --nnodes="$nnodes" --nproc-per-node="$nproc")
if ((nnodes == 1)); then
    command+=(--standalone)
else
    [[ -n $master_addr ]] || fail "--master-addr (or MASTER_ADDR) is required with $nnodes nodes"
    if [[ -n $node_rank ]]; then
        require_count --node-rank "$node_rank" 0
        ((node_rank < nnodes)) || fail "--node-rank must be below --nnodes ($nnodes), not $node_rank"
        command+=(--node-rank="$node_rank" --master-addr="$master_addr" --master-port="$master_port")
    else
        # Each node counts its own restarts under c10d, so the workers must not share the
        # agent's store across them: rank 0 then hosts a new store on a new port every round.
        command=(env TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 "${command[@]}"
            --rdzv-backend=c10d --rdzv-endpoint="$master_addr:$master_port" --rdzv-id="$rdzv_id")
    fi
fi
((10#$max_restarts == 0)) || command+=(--max-restarts="$max_restarts")
command+=("$here/train_imagenet.py" "${train_args[@]}")

if [[ ${ADAACT_DRY_RUN:-0} == 1 ]]; then
    printf -v line '%q ' "${command[@]}"
    echo "${line% }"
    exit 0
fi
exec "${command[@]}"
