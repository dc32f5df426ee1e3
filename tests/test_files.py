"""Atomic writes (vlmkit/files.py): the old file survives a failed write whole, and nothing is left beside it."""
import stat

import pytest

from vlmkit.files import atomic_dir, atomic_path, write_text_atomic


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "config.json"
    write_text_atomic(target, "old\n")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(target) as tmp:
            tmp.write_text("half of the ne")
            raise RuntimeError("disk full")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]


def test_a_finished_write_replaces_the_file_as_an_ordinary_file(tmp_path):
    target = tmp_path / "report.md"
    write_text_atomic(target, "old\n")
    write_text_atomic(target, "new\n")
    assert target.read_text() == "new\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644  # not mkstemp's private 0600
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_atomic_dir_appears_whole_or_not_at_all(tmp_path):
    target = tmp_path / "model"
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "model.safetensors").write_text("half")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []  # neither the folder nor its hidden partial
    target.mkdir()  # an empty folder is filled
    with atomic_dir(target) as tmp:
        (tmp / "config.json").write_text("{}")
    assert [p.name for p in target.iterdir()] == ["config.json"] and (target.stat().st_mode & 0o777) == 0o755
