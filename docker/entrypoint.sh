#!/usr/bin/env bash
# Entry point of the adaact-dist image: report the node (stderr), then run one command.
# The commands are in usage() below; see docker/README.md.
set -euo pipefail

project=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

usage() {
    cat <<'EOF'
usage: docker run [docker options] IMAGE COMMAND [ARGS...]

  train --config NAME [--set KEY=VALUE ...]  train on every GPU of this node:
                                             deepspeed --num_gpus <GPUs> launch/train_imagenet.py ...
  make-shards ARGS                           python launch/make_shards.py ARGS
  convert-checkpoint ARGS                    python launch/convert_checkpoint.py ARGS
  gpu-check [ARGS]                           python -m benchmarks.gpu_check ARGS
  help                                       this message
  any other command (bash, python, ...)      run as given

ADAACT_DRY_RUN=1 prints the command, shell-quoted, instead of running it.
EOF
}

# Runs the command in place of this shell, or prints it under ADAACT_DRY_RUN=1.
run() {
    if [[ ${ADAACT_DRY_RUN:-0} == 1 ]]; then
        local line
        printf -v line '%q ' "$@"
        echo "${line% }"
        return
    fi
    exec "$@"
}

# GPU count and driver from nvidia-smi: 0 and "none" without it or without a working driver.
count_gpus() {
    gpu_count=0
    driver=none
    local drivers
    if drivers=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null) \
        && [[ -n $drivers ]]; then
        local lines
        mapfile -t lines <<<"$drivers"
        gpu_count=${#lines[@]}
        driver=${lines[0]}
    fi
}

# One line on stderr; a missing or broken package reads "not installed", never an error.
# Versions come from package metadata and torch/version.py: importing torch would cost
# seconds at every start.
describe_node() {
    local versions
    if ! versions=$(python - 2>/dev/null <<'PY'
import importlib.metadata as metadata
import importlib.util
import runpy
from pathlib import Path


def version(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


torch = importlib.util.find_spec("torch")
cuda = None
if torch is not None and torch.origin is not None:
    try:
        cuda = runpy.run_path(str(Path(torch.origin).parent / "version.py")).get("cuda")
    except Exception:  # a damaged torch: report what the metadata says
        pass
dali = sorted(
    f"{dist.version} ({dist.metadata['Name']})"
    for dist in metadata.distributions()
    if (dist.metadata["Name"] or "").startswith("nvidia-dali")
)
print(
    f"torch {version('torch')} (CUDA {cuda or 'none'}); "
    f"DALI {', '.join(dali) or 'not installed'}; DeepSpeed {version('deepspeed')}"
)
PY
    ); then
        versions="torch, DALI, DeepSpeed: unknown (no working python)"
    fi
    echo "adaact-dist: ${gpu_count} GPUs, driver ${driver}; ${versions}" >&2
}

# Runs the launcher as a child, not in place of this shell: `docker stop` signals only the
# container's first process, and the DeepSpeed launcher would not pass SIGTERM on. This shell
# sends it to the ranks instead (their command lines carry --local_rank=), which checkpoint
# and exit 0; the launcher then ends with them, and the container with its status.
train_forwarding_stop() {
    "$@" &
    local launcher=$!
    trap 'echo "adaact-dist: stop requested: the ranks checkpoint and exit" >&2
          pkill --signal TERM --full -- "--local_rank=" || true' TERM INT
    # wait returns early when the trap runs; only the launcher's own end leaves the loop
    while kill -0 "$launcher" 2>/dev/null; do
        wait "$launcher" || true
    done
    local status=0
    wait "$launcher" || status=$? # bash keeps an ended child's status: the launcher's, not 143
    exit "$status"
}

has_config() {
    local arg
    for arg in "$@"; do
        [[ $arg == --config || $arg == --config=* ]] && return 0
    done
    return 1
}

if (($# == 0)); then
    usage >&2
    exit 2
fi
command=$1
shift
if [[ $command == help || $command == -h || $command == --help ]]; then
    usage
    exit 0
fi
if [[ $command == train ]] && ! has_config "$@"; then
    echo "train: --config NAME is required (a name in configs/ or a YAML path)" >&2
    usage >&2
    exit 2
fi

count_gpus
describe_node
case $command in
    train)
        # One rank per GPU; one CPU rank on a node without GPUs (a smoke test).
        train=(deepspeed --num_gpus "$((gpu_count > 0 ? gpu_count : 1))"
            "$project/launch/train_imagenet.py" "$@")
        if [[ ${ADAACT_DRY_RUN:-0} == 1 ]]; then
            run "${train[@]}"
        else
            train_forwarding_stop "${train[@]}"
        fi
        ;;
    make-shards) run python "$project/launch/make_shards.py" "$@" ;;
    convert-checkpoint) run python "$project/launch/convert_checkpoint.py" "$@" ;;
    # a module of the benchmarks package: it runs from the project folder
    gpu-check) cd "$project" && run python -m benchmarks.gpu_check "$@" ;;
    *) run "$command" "$@" ;;
esac
