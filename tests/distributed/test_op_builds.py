"""DeepSpeed's JIT-built ops go to a folder of this installation's own."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from adaact_dist.distributed import op_builds


@pytest.fixture
def unset(monkeypatch, tmp_path):
    monkeypatch.delenv(op_builds.ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    return monkeypatch


def _installed_at(monkeypatch, folder: str) -> None:
    spec = SimpleNamespace(origin=f"{folder}/deepspeed/__init__.py")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: spec)


def test_each_installation_gets_its_own_folder(unset, tmp_path):
    _installed_at(unset, "/venv-a/site-packages")
    first = op_builds.use_private_op_builds()
    assert first.parent == tmp_path / "torch_extensions" and first.name.startswith("deepspeed-")
    assert op_builds.os.environ[op_builds.ENV] == str(first)
    assert op_builds.use_private_op_builds() is None  # set now: left alone
    unset.delenv(op_builds.ENV)
    assert op_builds.use_private_op_builds() == first  # the same install: the same folder
    unset.delenv(op_builds.ENV)
    _installed_at(unset, "/venv-b/site-packages")
    assert op_builds.use_private_op_builds() not in (None, first)


def test_an_environment_entered_through_a_symlink_gets_its_own_folder(unset, tmp_path):
    """Its build commands name the include folders by the symlink's path: sharing the real
    environment's folder would make the two rebuild the op in turn."""
    real = tmp_path / "venv" / "site-packages"
    real.mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "venv")
    unset.setattr(op_builds.sys, "prefix", str(tmp_path / "venv"))
    _installed_at(unset, str(real))
    first = op_builds.use_private_op_builds()
    unset.delenv(op_builds.ENV)
    unset.setattr(op_builds.sys, "prefix", str(tmp_path / "link"))
    _installed_at(unset, str(tmp_path / "link" / "site-packages"))
    assert op_builds.use_private_op_builds() not in (None, first)


def test_a_folder_set_by_the_user_or_the_image_is_kept(monkeypatch):
    monkeypatch.setenv(op_builds.ENV, "/opt/ext")
    assert op_builds.use_private_op_builds() is None
    assert op_builds.os.environ[op_builds.ENV] == "/opt/ext"


def test_the_real_installation_is_found(unset):
    folder = op_builds.use_private_op_builds()
    assert folder is not None and Path(op_builds.os.environ[op_builds.ENV]) == folder


def test_every_process_builds_with_the_installations_own_ninja(unset):
    """A second ninja on PATH (the system's) records build commands differently: processes
    started with and without the virtual environment on PATH would rebuild in turn."""
    ninja = pytest.importorskip("ninja")
    unset.setenv("PATH", "/usr/bin:/bin")
    op_builds.use_private_op_builds()
    assert Path(shutil.which("ninja")).parent == Path(ninja.BIN_DIR)
    before = op_builds.os.environ["PATH"]
    op_builds.use_private_op_builds()
    assert op_builds.os.environ["PATH"] == before  # put first once, not again and again
