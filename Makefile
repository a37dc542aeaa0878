# Every target runs from a fresh clone: the virtual environment is created on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SOURCES := $(wildcard adaact_dist launch tests benchmarks .ci)

.PHONY: test lint format demo clean slurm slurm-stop hosts hosts-stop image image-test

$(STAMP): pyproject.toml docker/cuda-pins.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch (and DALI) come first, pinned in the file that docker/Dockerfile reads too, so that
	# no later resolution pulls another build.
	$(PY) -m pip install --quiet -r docker/cuda-pins.txt
	$(PY) -m pip install --quiet -e '.[test]'
	# DeepSpeed's CPU comm op, JIT-built once here rather than inside the first CPU job.
	$(PY) -c "from adaact_dist.distributed.op_builds import build_cpu_comm_op; build_cpu_comm_op()"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m ruff check $(SOURCES)
	$(PY) .ci/lint_coverage.py $(SOURCES)
	$(VENV)/bin/hadolint docker/Dockerfile
	$(PY) -m pytest -q --durations=20 tests

lint: $(STAMP)
	$(PY) -m ruff check $(SOURCES)
	$(PY) -m ruff format --check $(SOURCES)
	$(PY) .ci/lint_coverage.py $(SOURCES)

format: $(STAMP)
	$(PY) -m ruff format $(SOURCES)
	$(PY) -m ruff check --fix $(SOURCES)

# The demo: digits shards built on first use, 2 CPU ranks through the DeepSpeed launcher.
demo: $(STAMP)
	$(VENV)/bin/deepspeed --num_gpus 2 launch/train_imagenet.py --config demo

# A one-node Slurm cluster on this machine (root; installs Debian's packages where missing) for
# tests/launch/test_slurm_requeue.py, which skips without one. .ci/run starts it before the tests.
slurm:
	.ci/slurm_cluster.sh start

slurm-stop:
	.ci/slurm_cluster.sh stop

# Two emulated hosts on this machine (network namespaces node1 and node2, each with its own sshd
# and hostname; root; installs openssh-server and pdsh where missing) for
# tests/launch/test_multinode.py, which skips without them. .ci/run starts them before the tests.
hosts:
	.ci/emulated_hosts.sh start 2

hosts-stop:
	.ci/emulated_hosts.sh stop

# The image (docker/Dockerfile, CUDA base): docker build where a Docker daemon answers, else
# buildah.
# IMAGE, BASE_IMAGE, USER_UID and USER_GID pass through, e.g. make image USER_UID=$(id -u).
image:
	docker/image.sh build

# The image built on a Debian stand-in base (debootstrap; buildah as root, both installed where
# missing), then help, a short demo run, make-shards and gpu-check --smoke as its user; skips
# with the reason where it cannot run. The host's environment downloads the CUDA wheels once.
image-test: $(STAMP)
	docker/image.sh test

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
