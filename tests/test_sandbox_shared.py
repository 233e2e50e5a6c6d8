"""Warm workers shared by a workspace root, each call confined to its own workdir (Landlock)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from insitu.sandbox import Sandbox, SandboxSettings
from insitu.sandbox.runner import landlock_abi

pytestmark = pytest.mark.skipif(landlock_abi() < 1, reason="Landlock is not available")

WRITER = """
import os
from pathlib import Path
from pydantic import BaseModel
__TOOL_META__ = {"name": "write_file", "description": "Writes a file.", "dependencies": []}
class InputModel(BaseModel):
    target: str
class OutputModel(BaseModel):
    cwd: str
    wrote: bool
def run(input: InputModel) -> OutputModel:
    try:
        Path(input.target).write_text("x")
    except OSError:
        return OutputModel(cwd=os.getcwd(), wrote=False)
    return OutputModel(cwd=os.getcwd(), wrote=True)
"""

KILLER = """
import os, signal
__TOOL_META__ = {"name": "kill_parent", "description": "Kills its parent.", "dependencies": []}
def run() -> dict:
    os.kill(os.getppid(), signal.SIGKILL)
    return {}
"""


@pytest.fixture
def root() -> Iterator[Path]:
    # Outside /tmp: a root beneath a directory every call may write cannot be confined.
    base = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="insitu-shared-"))
    yield base / "workspaces"
    import shutil

    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def shared(root: Path) -> Iterator[Sandbox]:
    with Sandbox(SandboxSettings(workspace_root=str(root))) as sandbox:
        if sandbox.backend != "bwrap":
            pytest.skip("workers are shared only with the bubblewrap backend")
        yield sandbox


def write(sandbox: Sandbox, workdir: Path, target: str | Path) -> dict:
    out = sandbox.call(WRITER, {"target": str(target)}, workdir=workdir)
    assert out.ok, out
    return out.output


def test_one_worker_serves_every_workdir_under_the_root(shared: Sandbox, root: Path) -> None:
    for name in ("a", "b", "c"):
        result = write(shared, root / name, "own.txt")
        assert result == {"cwd": str(root / name), "wrote": True}
        assert (root / name / "own.txt").exists()
    assert shared.worker_count == 1


def test_a_call_writes_only_in_its_own_workdir(shared: Sandbox, root: Path) -> None:
    write(shared, root / "b", "own.txt")
    assert write(shared, root / "a", root / "b" / "stolen.txt")["wrote"] is False
    assert write(shared, root / "a", root / "b" / "own.txt")["wrote"] is False
    assert write(shared, root / "a", root / "top.txt")["wrote"] is False
    assert write(shared, root / "a", "/tmp/scratch.txt")["wrote"] is True
    assert not (root / "b" / "stolen.txt").exists() and not (root / "top.txt").exists()
    assert (root / "b" / "own.txt").read_text() == "x"


def test_a_worker_killed_by_one_call_does_not_harm_the_next(shared: Sandbox, root: Path) -> None:
    out = shared.call(KILLER, {}, workdir=root / "a")
    assert not out.ok
    assert write(shared, root / "b", "own.txt")["wrote"] is True


def test_a_root_under_tmp_is_not_shared(tmp_path: Path) -> None:
    root = tmp_path / "workspaces"
    with Sandbox(SandboxSettings(workspace_root=str(root))) as sandbox:
        for name in ("a", "b"):
            write(sandbox, root / name, "own.txt")
        assert sandbox.worker_count == (2 if sandbox.backend == "bwrap" else sandbox.worker_count)
        out = sandbox.call(WRITER, {"target": str(root / "a" / "x.txt")}, workdir=root / "b")
        if sandbox.backend == "bwrap":
            assert out.output["wrote"] is False  # each worker binds its own workdir only
    assert os.path.isdir(root)


def test_episodes_in_a_real_store_use_the_shared_workers(root: Path) -> None:
    from insitu.api import run_task
    from insitu.context import InsituContext
    from insitu.services import open_sandbox
    from insitu.testing.team import ScriptedTeam

    store_dir = root.parent / "store"  # a store outside /tmp, as ./.insitu would be
    context = InsituContext(store_dir=str(store_dir), embedding="hashing")
    team = ScriptedTeam()
    for task in ("What is the mean of 3, 5, 10 and 2?", "Compute the average of 1, 2 and 6"):
        result = run_task(task, models=team.model(), context=context, checkpoint=False)
        assert result.status == "completed", result
    sandbox = open_sandbox(context)
    if sandbox.backend != "bwrap":
        pytest.skip("workers are shared only with the bubblewrap backend")
    shared = sandbox._shared_root()
    assert shared == (store_dir / "workspaces").resolve()
    # Both episodes' calls (and the build's tests) were served under the shared root.
    st = os.stat(shared)
    assert sandbox._pool.serves((str(shared), st.st_dev, st.st_ino, False, sandbox.python()))
