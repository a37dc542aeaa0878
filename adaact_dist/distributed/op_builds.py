"""One folder per installation for the ops that DeepSpeed JIT-builds (its CPU comm op).

torch keys its extensions folder by Python and CUDA version only
(``~/.cache/torch_extensions/py311_cu130``), so two installations of DeepSpeed on one
machine (two virtual environments; a fresh clone beside a checkout) share one build of
``deepspeed_shm_comm``: each sees the other's sources in the build file, rebuilds against
its own (a minute or more on a busy 2-core machine) under one lock, and the other then
rebuilds again, so every process start waits for a compile. Keyed by DeepSpeed's install
folder, each installation builds once and reuses its build.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from pathlib import Path

ENV = "TORCH_EXTENSIONS_DIR"


def use_private_op_builds() -> Path | None:
    """Point ``TORCH_EXTENSIONS_DIR`` at this installation's own folder, unless it is set
    (a container image sets it); call before DeepSpeed loads an op. Returns the folder, or
    None where the variable was already set or DeepSpeed is not installed."""
    if os.environ.get(ENV):
        return None
    spec = importlib.util.find_spec("deepspeed")
    if spec is None or spec.origin is None:
        return None
    install = str(Path(spec.origin).resolve().parent)
    tag = hashlib.sha256(install.encode()).hexdigest()[:12]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    folder = cache / "torch_extensions" / f"deepspeed-{tag}"
    os.environ[ENV] = str(folder)
    return folder


def build_cpu_comm_op() -> None:
    """Build DeepSpeed's CPU comm op into this installation's folder now (``make`` does it
    when it installs), so that the first CPU job does not compile it inside its own time."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    use_private_op_builds()
    from deepspeed.comm.torch import build_shm_op

    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # "no CUDA runtime"
    build_shm_op()
