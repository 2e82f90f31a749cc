"""Export archives: self-contained, verified on import, idempotent, refused when damaged."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest

import ckptlite
from ckptlite import Level
from ckptlite.archive import export_archive, import_archive


@pytest.fixture(autouse=True)
def _no_user_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CKPTLITE_CONFIG", str(tmp_path / "none.toml"))


def fill(mgr: ckptlite.CheckpointManager) -> dict[str, object]:
    rng = np.random.default_rng(3)
    top = mgr.save("geo", {"n": 2}, level=Level.PIPELINE, name="run")
    stage = mgr.save("geo", {"r": rng.random(200_000, dtype="f4")}, level=Level.STAGE, parent=top)
    step = mgr.save("geo", b"tile" * 10, level=Level.STEP, name="t0", parent=stage)
    with mgr.run("geo") as run:  # runs and the work-item ledger travel too
        for item in run.items("tiles", ["a", "b", "c"]):
            item.done({"sum": ord(item.id)})
    return {c.id: mgr.load(c.id) for c in (top, stage, step)}


def same(a: object, b: object) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and np.array_equal(a, b)
    return a == b


@pytest.mark.parametrize("kind", ["local", "memory"])
def test_round_trip_is_verified_and_idempotent(tmp_path: Path, kind: str) -> None:
    url = str(tmp_path / "src") if kind == "local" else "memory://"
    archive = tmp_path / "out.tar"
    with ckptlite.open(url, durability="none") as src:
        states = fill(src)
        seen: list[tuple[int, int]] = []
        report = export_archive(src, archive, lambda d, t: seen.append((d, t)))
        records = {c.id: c for c in src.list()}
    assert report.checkpoints == 3 and report.archive_bytes == archive.stat().st_size
    assert seen and seen[-1][0] in (3, seen[-1][1])  # chunk files copied, or checkpoints
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".ckptlite")] == []

    with ckptlite.open(tmp_path / "dst", durability="none") as dst:
        first = import_archive(dst, archive)
        assert (first.checkpoints, first.imported) == (3, 3)
        assert (first.runs_imported, first.items_imported) == (1, 3)
        again = import_archive(dst, archive)
        assert (again.imported, again.runs_imported, again.items_imported) == (0, 0, 0)
        assert len(dst.list()) == 3
        [run] = dst.list_runs("geo")
        assert run.status == ckptlite.RunStatus.COMPLETED and run.progress == (3, 3)
        with dst.run("geo", run_id=run.id) as resumed:
            assert resumed.results("tiles") == {k: {"sum": ord(k)} for k in "abc"}
        for cid, state in states.items():
            assert same(dst.load(cid), state)
            got = dst.get(cid)
            assert (got.checksum, got.parent_id, got.created_at) == (
                records[cid].checksum,
                records[cid].parent_id,
                records[cid].created_at,
            )
        assert dst.verify(full=True).ok


def test_export_refuses_an_existing_file(tmp_path: Path) -> None:
    (tmp_path / "a.tar").write_text("mine")
    with ckptlite.open("memory://") as mgr, pytest.raises(ckptlite.InvalidInputError):
        export_archive(mgr, tmp_path / "a.tar")
    assert (tmp_path / "a.tar").read_text() == "mine"


def _damage_a_chunk(archive: Path) -> None:
    with tarfile.open(archive) as tar:
        member = next(m for m in tar if "/blobs/" in m.name)
    with archive.open("r+b") as f:
        f.seek(member.offset_data + member.size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x10]))


def test_a_damaged_archive_changes_nothing(tmp_path: Path) -> None:
    archive = tmp_path / "out.tar"
    with ckptlite.open(tmp_path / "src", durability="none") as src:
        fill(src)
        stage = src.list(level=Level.STAGE)[0]
        export_archive(src, archive)
    _damage_a_chunk(archive)
    with ckptlite.open(tmp_path / "dst", durability="none") as dst:
        dst.save("existing", 1)
        with pytest.raises(ckptlite.CorruptCheckpointError, match=stage.id) as e:
            import_archive(dst, archive)
        assert "nothing was imported" in str(e.value)
        assert [c.process_id for c in dst.list()] == ["existing"]
        assert dst.stats()["chunks"] == 0


def test_truncated_archive_is_damaged(tmp_path: Path) -> None:
    archive = tmp_path / "out.tar"
    with ckptlite.open(tmp_path / "src", durability="none") as src:
        fill(src)
        export_archive(src, archive)
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    with ckptlite.open("memory://") as dst:
        with pytest.raises(ckptlite.CorruptCheckpointError):
            import_archive(dst, archive)
        assert dst.list() == []


def _tar_with(path: Path, name: str, data: bytes = b"x", kind: bytes = tarfile.REGTYPE) -> None:
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo(name)
        info.size, info.type = len(data), kind
        if kind == tarfile.SYMTYPE:
            info.size, info.linkname = 0, "/etc/passwd"
        tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("../evil", tarfile.REGTYPE),
        ("/tmp/evil", tarfile.REGTYPE),
        ("ckptlite-archive/store/../../evil", tarfile.REGTYPE),
        ("ckptlite-archive/store/ckptlite.db", tarfile.SYMTYPE),
        ("ckptlite-archive/store/blobs/aa/" + "b" * 64, tarfile.REGTYPE),
    ],
)
def test_only_known_regular_members_are_read(tmp_path: Path, name: str, kind: bytes) -> None:
    archive = tmp_path / "evil.tar"
    _tar_with(archive, name, kind=kind)
    with ckptlite.open("memory://") as dst, pytest.raises(ckptlite.InvalidInputError):
        import_archive(dst, archive)
    assert not (tmp_path.parent / "evil").exists()


def test_not_an_archive(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar file at all" * 100)
    with ckptlite.open("memory://") as dst:
        with pytest.raises(ckptlite.InvalidInputError, match="not a ckptlite archive"):
            import_archive(dst, junk)
        with pytest.raises(ckptlite.InvalidInputError, match="no archive"):
            import_archive(dst, tmp_path / "absent.tar")
