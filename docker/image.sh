#!/usr/bin/env bash
# Builds the image, or builds it on a stand-in base and runs the commands a user runs first.
#
#   docker/image.sh build   # make image: docker/Dockerfile as it is (the CUDA base), with
#                           # docker where it exists, else buildah
#   docker/image.sh test    # make image-test: as root, with buildah on a Debian base made by
#                           # debootstrap, then help, a short demo training, make-shards into
#                           # a mounted folder and gpu-check --smoke, as the image's user
#
# build: IMAGE (default adaact-dist:<version>), BASE_IMAGE, USER_UID and USER_GID pass through
# as the tag and the build arguments when set; ENGINE=docker|buildah picks the builder.
# test: installs Debian's buildah and debootstrap where missing; without root, apt-get or those
# packages it says why and exits 0 (skipped). The base (localhost/adaact-base:bookworm) is made
# once and reused; the CUDA wheels of docker/cuda-pins.txt are downloaded once into
# .cache/image-test/home/wheels, which the build reads as pip's find-links (mounted as the
# build's /root, pip's user config included), so a rebuild does not fetch them again. buildah's
# layer cache keeps the rest. Any step that fails prints its output and exits 1.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml | head -n 1)
SUITE=bookworm                   # Debian 12: python3 is 3.11, the project's oldest Python
SUITE_PYTHON=3.11                # the Python the stand-in image gets, for its wheels
MIRROR=${ADAACT_DEBIAN_MIRROR:-http://deb.debian.org/debian}
BASE=localhost/adaact-base:$SUITE
TEST_IMAGE=localhost/adaact-dist:image-test
CACHE=${ADAACT_IMAGE_CACHE:-$ROOT/.cache/image-test}
HOST_PYTHON=${HOST_PYTHON:-$ROOT/.venv/bin/python}
# buildah's own storage (overlay as root on Debian); ADAACT_STORAGE_DRIVER=... picks another.
BUILDAH=(buildah ${ADAACT_STORAGE_DRIVER:+--storage-driver "$ADAACT_STORAGE_DRIVER"})

# What a failed or interrupted test leaves behind: its working containers, the rootfs.
CONTAINERS=()
ROOTFS=
cleanup() {
    local container
    for container in "${CONTAINERS[@]}"; do
        "${BUILDAH[@]}" rm "$container" >/dev/null 2>&1 || true
    done
    [[ -z $ROOTFS ]] || rm -rf "$ROOTFS"
}

say() { echo "image-test: $*" >&2; }
skip() {
    say "skipped: $*"
    exit 0
}
die() {
    say "FAILED: $*"
    exit 1
}

# -- make image ---------------------------------------------------------------------------
# ENGINE=docker|buildah chooses; otherwise docker where its daemon answers, else buildah.
build() {
    local engine=${ENGINE:-} args=() name base
    if [[ -z $engine ]]; then
        if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
            engine=docker
        elif command -v buildah >/dev/null; then
            engine=buildah
        else
            echo "image: no docker daemon answers here and buildah is not installed" >&2
            exit 1
        fi
    fi
    for name in USER_UID USER_GID; do
        if [[ -n ${!name:-} ]]; then
            args+=(--build-arg "$name=${!name}")
        fi
    done
    base=${BASE_IMAGE:-}
    if [[ $engine == buildah ]]; then
        # buildah resolves no short name without a search registry: name Docker Hub's image.
        base=${base:-$(sed -n 's/^ARG BASE_IMAGE=//p' docker/Dockerfile)}
        [[ ${base%%/*} == *[.:]* || ${base%%/*} == localhost ]] || base=docker.io/$base
        engine=(buildah bud --isolation chroot --layers --force-rm)
    else
        engine=(docker build)
    fi
    [[ -z $base ]] || args+=(--build-arg "BASE_IMAGE=$base")
    set -x
    "${engine[@]}" "${args[@]}" -f docker/Dockerfile -t "${IMAGE:-adaact-dist:$VERSION}" .
}

# -- make image-test ----------------------------------------------------------------------
install_tools() {
    local missing=()
    command -v buildah >/dev/null || missing+=(buildah)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    ((${#missing[@]} == 0)) && return
    command -v apt-get >/dev/null || skip "no apt-get to install ${missing[*]} with"
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get update -qq || ! apt-get install -y -qq "${missing[@]}" >/dev/null; then
        skip "apt-get could not install ${missing[*]} (see above)"
    fi
}

# A Debian $SUITE root file system from debootstrap, as the image $BASE (made once).
make_base() {
    if "${BUILDAH[@]}" inspect --type image "$BASE" >/dev/null 2>&1; then
        say "base $BASE: present, reused (buildah rmi $BASE to make it again)"
        return
    fi
    say "base $BASE: debootstrap $SUITE from $MIRROR"
    local started=$SECONDS rootfs container mountpoint
    rootfs=$(mktemp -d "${TMPDIR:-/tmp}/adaact-rootfs.XXXXXX")
    ROOTFS=$rootfs
    if ! debootstrap --variant=minbase "$SUITE" "$rootfs" "$MIRROR" \
        >"$CACHE/debootstrap.log" 2>&1; then
        tail -n 40 "$CACHE/debootstrap.log" >&2
        die "debootstrap $SUITE failed (log above, whole in $CACHE/debootstrap.log)"
    fi
    rm -rf "${rootfs:?}"/var/cache/apt/archives/*.deb "${rootfs:?}"/var/lib/apt/lists/*
    container=$("${BUILDAH[@]}" from scratch)
    CONTAINERS+=("$container")
    mountpoint=$("${BUILDAH[@]}" mount "$container")
    tar -C "$rootfs" -c . | tar -C "$mountpoint" -x -p --numeric-owner
    "${BUILDAH[@]}" umount "$container" >/dev/null
    # An image's PATH comes from its config, and the Dockerfile's ENV PATH=/opt/venv/bin:$PATH
    # reads it.
    "${BUILDAH[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --cmd /bin/bash "$container"
    "${BUILDAH[@]}" commit --quiet --rm "$container" "$BASE" >/dev/null
    rm -rf "$rootfs"
    ROOTFS=
    say "base $BASE: made in $((SECONDS - started)) s"
}

# The CUDA builds of docker/cuda-pins.txt (about 3 GB) as wheels for the stand-in's Python, and
# the pip configuration that points the build at them. pip takes a local file over the same
# file on the index, so the build downloads only the project's other dependencies.
prepare_wheels() {
    [[ -x $HOST_PYTHON ]] || die "no $HOST_PYTHON to download the wheels with: run make first"
    local home=$CACHE/home started=$SECONDS stamp
    mkdir -p "$home/wheels" "$home/.config/pip"
    # written after a complete download: the pins and the Python it was for
    stamp="python $SUITE_PYTHON; $(sha256sum docker/cuda-pins.txt | cut -d' ' -f1)"
    if [[ $(cat "$home/wheels/.complete" 2>/dev/null) == "$stamp" ]]; then
        say "wheels of docker/cuda-pins.txt: present in $home/wheels"
    else
        find "$home/wheels" -mindepth 1 -delete # the wheels of other pins, a broken download
        if ! "$HOST_PYTHON" -m pip download --quiet --disable-pip-version-check \
            --only-binary=:all: --python-version "$SUITE_PYTHON" --dest "$home/wheels" \
            -r docker/cuda-pins.txt >"$CACHE/wheels.log" 2>&1; then
            cat "$CACHE/wheels.log" >&2
            die "could not download the wheels of docker/cuda-pins.txt"
        fi
        echo "$stamp" >"$home/wheels/.complete"
        say "wheels of docker/cuda-pins.txt: $(du -sh "$home/wheels" | cut -f1) in" \
            "$home/wheels ($((SECONDS - started)) s)"
    fi
    {
        echo "[global]"
        echo "find-links = /root/wheels"
        # the CAs this machine trusts, for the index (a proxy's own CA included)
        if [[ -f /etc/ssl/certs/ca-certificates.crt ]]; then
            cp /etc/ssl/certs/ca-certificates.crt "$home/ca-certificates.crt"
            echo "cert = /root/ca-certificates.crt"
        fi
    } >"$home/.config/pip/pip.conf"
}

image_id() {
    "${BUILDAH[@]}" images --noheading --no-trunc --format '{{.ID}}' "$1" 2>/dev/null || true
}

build_stand_in() {
    local started=$SECONDS previous
    previous=$(image_id "$TEST_IMAGE")
    say "building $TEST_IMAGE on $BASE"
    # /root exists in every base, so mounting it leaves no mount point behind in the image.
    if ! "${BUILDAH[@]}" bud --isolation chroot --layers --force-rm --pull=never \
        --build-arg "BASE_IMAGE=$BASE" --volume "$CACHE/home:/root" \
        -f docker/Dockerfile -t "$TEST_IMAGE" . >"$CACHE/build.log" 2>&1; then
        tail -n 80 "$CACHE/build.log" >&2
        die "buildah bud failed (log above, whole in $CACHE/build.log)"
    fi
    BUILD_SECONDS=$((SECONDS - started))
    say "built $TEST_IMAGE in $BUILD_SECONDS s"
    # The image it replaces, and the layers only that one used: storage stays one image large.
    if [[ -n $previous && $previous != "$(image_id "$TEST_IMAGE")" ]]; then
        "${BUILDAH[@]}" rmi "$previous" >/dev/null 2>&1 || true
    fi
}

# Runs the entrypoint with ARGS in a fresh container of the image, as its user, with the
# volumes in VOLUMES; the output goes to $CACHE/<name>.log, and is printed when it fails.
VOLUMES=()
run_step() {
    local name=$1 limit=$2
    shift 2
    local container status=0 started=$SECONDS
    local log=$CACHE/$name.log
    local volumes=()
    local volume
    for volume in "${VOLUMES[@]}"; do
        volumes+=(--volume "$volume")
    done
    container=$("${BUILDAH[@]}" from --pull=never "$TEST_IMAGE")
    CONTAINERS+=("$container")
    timeout --kill-after 30 "$limit" "${BUILDAH[@]}" run --isolation chroot --user "$USER_IDS" \
        "${volumes[@]}" "$container" -- /workspace/docker/entrypoint.sh "$@" >"$log" 2>&1 ||
        status=$?
    LAST_CONTAINER=$container
    if ((status != 0)); then
        cat "$log" >&2
        ((status == 124)) && die "$name: no end after $limit s (output above)"
        die "$name: exit status $status (output above)"
    fi
    say "$name: ok ($((SECONDS - started)) s)"
}

# A command in the container that the last step ran in (its files as that step left them).
in_last_container() {
    "${BUILDAH[@]}" run --isolation chroot --user "$USER_IDS" "$LAST_CONTAINER" -- "$@"
}

end_last_container() { "${BUILDAH[@]}" rm "$LAST_CONTAINER" >/dev/null; }

check_help() {
    run_step help 60 help
    grep -q "usage: docker run" "$CACHE/help.log" || {
        cat "$CACHE/help.log" >&2
        die "help: no usage printed"
    }
    end_last_container
}

# The demo recipe, 5 steps: the digits are built into /workspace/.cache/demo-data (the image's
# working directory, owned by the user) and the run lands in the mounted runs folder. The user's
# cache is a mounted folder too (docker/README.md), so that DeepSpeed's CPU comm op, JIT-built
# at the first CPU run (1.5 min), is built once for this step and gpu-check's demo.
check_train() {
    local runs=$WORK/runs
    mkdir -p "$runs" "$WORK/user-cache"
    chown "$USER_IDS" "$runs" "$WORK/user-cache"
    VOLUMES=("$runs:/workspace/runs" "$WORK/user-cache:/home/adaact/.cache")
    run_step train 1200 train --config demo --set schedule.max_steps=5 schedule.warmup_epochs=0 \
        run.name=image-test run.output_dir=runs/image-test
    VOLUMES=()
    local summary=$runs/image-test/summary.json
    [[ -f $summary ]] || die "train: no $summary on the host (log: $CACHE/train.log)"
    "$HOST_PYTHON" - "$summary" <<'PY' || die "train: the summary says the run did not finish"
import json, sys
summary = json.load(open(sys.argv[1]))
print(f"image-test: train: summary.json: finished={summary['finished']}, "
      f"stop_reason={summary['stop_reason']}", file=sys.stderr)
sys.exit(0 if summary["finished"] else 1)
PY
    [[ $(stat -c %u:%g "$summary") == "$USER_IDS" ]] ||
        die "train: $summary belongs to $(stat -c %u:%g "$summary"), not $USER_IDS"
    in_last_container find /workspace/.cache/demo-data -path '*/train/manifest.json' \
        >"$CACHE/demo-data.txt"
    [[ -s $CACHE/demo-data.txt ]] || die "train: no demo data in /workspace/.cache/demo-data"
    end_last_container
}

# make-shards from a small ImageFolder (two classes, JPEG and PNG) into a mounted folder.
check_make_shards() {
    local source=$WORK/src data=$WORK/data
    mkdir -p "$data"
    "$HOST_PYTHON" - "$source" <<'PY'
import sys
from pathlib import Path
from PIL import Image
root = Path(sys.argv[1])
for label, colour in (("cat", (200, 40, 40)), ("dog", (40, 40, 200))):
    (root / label).mkdir(parents=True, exist_ok=True)
    for i in range(6):
        image = Image.new("RGB", (40 + i, 32), tuple(c + 5 * i for c in colour))
        image.save(root / label / f"{i}.{'png' if i == 0 else 'jpg'}")
PY
    chown "$USER_IDS" "$data"
    VOLUMES=("$source:/src:ro" "$data:/data")
    run_step make-shards 600 make-shards --src /src --out /data --split train --shard-size 5 \
        --workers 2 --seed 0
    VOLUMES=()
    end_last_container
    local manifest=$data/train/manifest.json shards
    [[ -f $manifest ]] || die "make-shards: no $manifest on the host"
    shards=$(find "$data/train" -name '*.tar' | wc -l)
    ((shards == 3)) || die "make-shards: $shards shards in $data/train, not 3 (12 images, 5 each)"
    say "make-shards: $shards shards and manifest.json in $data/train on the host"
}

# gpu-check --smoke writes its report into /workspace/benchmarks; without a GPU the GPU parts
# are skipped with a reason, and no part fails.
check_gpu_check() {
    VOLUMES=("$WORK/user-cache:/home/adaact/.cache")
    run_step gpu-check 1500 gpu-check --smoke
    VOLUMES=()
    in_last_container python - <<'PY' >"$CACHE/gpu-check-report.txt" 2>&1 || {
import json
report = json.load(open("/workspace/benchmarks/gpu_check.json"))
bad = []
for part in report["parts"]:
    reason = f" ({part['reason']})" if part["reason"] else ""
    print(f"  {part['name']}: {part['status']}{reason}")
    if part["status"] != "ok" and not (part["status"] == "skipped" and part["reason"]):
        bad.append(part["name"])
assert not bad, f"failed or skipped without a reason: {bad}"
PY
        cat "$CACHE/gpu-check-report.txt" "$CACHE/gpu-check.log" >&2
        die "gpu-check: no report in /workspace/benchmarks, or a part failed (above)"
    }
    in_last_container test -s /workspace/benchmarks/gpu_check.md ||
        die "gpu-check: no /workspace/benchmarks/gpu_check.md"
    end_last_container
    say "gpu-check: report in /workspace/benchmarks/gpu_check.md; parts:"
    cat "$CACHE/gpu-check-report.txt" >&2
}

image_test() {
    local started=$SECONDS
    [[ $(uname -s) == Linux ]] || skip "buildah builds run on Linux only"
    ((EUID == 0)) || skip "not root: buildah's chroot builds and debootstrap need root here"
    install_tools
    trap cleanup EXIT
    mkdir -p "$CACHE"
    make_base
    prepare_wheels
    build_stand_in
    USER_IDS=$("${BUILDAH[@]}" inspect --type image --format '{{.OCIv1.Config.User}}' "$TEST_IMAGE")
    [[ $USER_IDS =~ ^[1-9][0-9]*:[0-9]+$ ]] || die "the image's user is '$USER_IDS', not UID:GID"
    WORK=$CACHE/work
    rm -rf "$WORK"
    mkdir -p "$WORK"
    check_help
    check_train
    check_make_shards
    check_gpu_check
    say "passed in $((SECONDS - started)) s (build $BUILD_SECONDS s) as user $USER_IDS;" \
        "image size: $("${BUILDAH[@]}" images --format '{{.Size}}' "$TEST_IMAGE")"
    "${BUILDAH[@]}" images "$TEST_IMAGE" >&2
}

case ${1:-} in
    build) build ;;
    test) image_test ;;
    *)
        echo "usage: docker/image.sh build | test" >&2
        exit 2
        ;;
esac
