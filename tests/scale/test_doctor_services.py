"""``insitu doctor`` checks the shared services the settings point to, on real servers."""

from __future__ import annotations

from pathlib import Path

import pytest

from insitu import doctor
from insitu.context import InsituContext
from insitu.testing.services import ChromaServer

pytestmark = pytest.mark.scale


def service_rows(context: InsituContext) -> dict[str, doctor.Check]:
    return {c.name: c for c in doctor.check_shared_services(context)}


def test_live_services_pass(chroma_server: ChromaServer, postgres_dsn: str, tmp_path: Path) -> None:
    rows = service_rows(
        InsituContext(
            store_dir=str(tmp_path), chroma_url=chroma_server.url, checkpoint_url=postgres_dsn
        )
    )
    assert rows["chroma server"].status == doctor.OK
    assert rows["checkpoints database"].status == doctor.OK


def test_dead_services_fail_with_the_fix_and_no_password(tmp_path: Path) -> None:
    rows = service_rows(
        InsituContext(
            store_dir=str(tmp_path),
            chroma_url="http://127.0.0.1:9",
            checkpoint_url="postgresql://insitu:s3cret@127.0.0.1:9/library",
        )
    )
    chroma, checkpoints = rows["chroma server"], rows["checkpoints database"]
    assert chroma.status == doctor.FAIL and "fix chroma_url" in chroma.detail
    assert checkpoints.status == doctor.FAIL and "fix checkpoint_url" in checkpoints.detail
    assert "s3cret" not in checkpoints.detail and "insitu:***@" in checkpoints.detail
    assert doctor.check_shared_services(InsituContext(store_dir=str(tmp_path))) == []


def test_a_library_on_postgresql_is_checked_there(
    chroma_server: ChromaServer, postgres_dsn: str, tmp_path: Path
) -> None:
    from insitu.tool_store import ToolStore
    from insitu.tool_store.testing import make_spec

    options = {"chroma_url": chroma_server.url, "records_url": postgres_dsn}
    with ToolStore.open(tmp_path / "local", embedding="hashing", **options) as store:
        store.add(make_spec("compute_mean", "Computes the mean of numbers."))
    row = doctor.check_store(InsituContext(store_dir=str(tmp_path / "local"), **options))
    assert row.status == doctor.OK and "1 active tool(s)" in row.detail, row
    assert not (tmp_path / "local" / "tools.db").exists()
