"""One folder per installation for the ops that DeepSpeed JIT-builds (its CPU comm op).

torch keys its extensions folder by Python and CUDA version only
(``~/.cache/torch_extensions/py311_cu130``), so two installations of DeepSpeed on one
machine (two virtual environments; a fresh clone beside a checkout) share one build of
``deepspeed_shm_comm``: each sees the other's sources in the build file, rebuilds against
its own (a minute or more on a busy 2-core machine) under one lock, and the other then
rebuilds again, so every process start waits for a compile. Keyed by the environment and
DeepSpeed's install folder, each installation builds once and reuses its build.

Within one installation the build must also always go through the same ``ninja``: DeepSpeed
installs one (the ``ninja`` package, next to its Python), a machine often has another on
``PATH``, and ninja versions record their build commands differently, so a process started
with the virtual environment's ``bin`` on ``PATH`` and one started without it rebuild the op in
turn, each waiting for the other's compile. The installation's own ninja is put first.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import sys
from pathlib import Path

ENV = "TORCH_EXTENSIONS_DIR"


def use_private_op_builds() -> Path | None:
    """Point ``TORCH_EXTENSIONS_DIR`` at this installation's own folder, unless it is set
    (a container image sets it); call before DeepSpeed loads an op. Returns the folder, or
    None where the variable was already set or DeepSpeed is not installed."""
    _prefer_installed_ninja()
    if os.environ.get(ENV):
        return None
    spec = importlib.util.find_spec("deepspeed")
    if spec is None or spec.origin is None:
        return None
    # As this process reached it, not resolved: the build commands hold the include paths
    # under sys.prefix, so an environment entered through a symlink writes other commands
    # and must not share (and rebuild in turn) the folder of the environment it points to.
    install = f"{sys.prefix}{os.pathsep}{Path(spec.origin).parent}"
    tag = hashlib.sha256(install.encode()).hexdigest()[:12]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    folder = cache / "torch_extensions" / f"deepspeed-{tag}"
    os.environ[ENV] = str(folder)
    return folder


def _prefer_installed_ninja() -> None:
    """Put the folder of the ``ninja`` package's binary first on ``PATH`` (torch runs ``ninja``
    by name), where that package is installed."""
    try:
        import ninja
    except ImportError:
        return
    folder = getattr(ninja, "BIN_DIR", None)
    if not folder or not (Path(folder) / "ninja").is_file():
        return
    path = os.environ.get("PATH", "")
    if path.split(os.pathsep)[0] != folder:
        os.environ["PATH"] = os.pathsep.join([folder, path]) if path else folder


def build_cpu_comm_op() -> None:
    """Build DeepSpeed's CPU comm op into this installation's folder now (``make`` does it
    when it installs), so that the first CPU job does not compile it inside its own time."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    use_private_op_builds()
    from deepspeed.comm.torch import build_shm_op

    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # "no CUDA runtime"
    build_shm_op()
