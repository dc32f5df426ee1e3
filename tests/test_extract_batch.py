"""Batch mode: a folder in, JSONL out; a bad file is an error row; a second run resumes instead of repeating."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("rapidocr_onnxruntime")

from vlmkit.apps.batch import done_ids, find_images, run_batch  # noqa: E402
from vlmkit.apps.extract import ExtractConfig, Extractor  # noqa: E402
from vlmkit.data import make_source  # noqa: E402


class Counting:
    """An extractor that counts its calls, so a resume can be seen not to repeat work."""

    def __init__(self):
        self.ex = Extractor("receipt", ExtractConfig(mode="ocr"))
        self.seen = []

    def __call__(self, path, source=None):
        self.seen.append(path.name)
        return self.ex(path, source=source)


@pytest.fixture()
def folder(tmp_path):
    d = tmp_path / "scans"
    (d / "sub").mkdir(parents=True)
    samples = make_source("receipts", "test", seed=11, n=2, augment="photo")
    samples[0].image.save(d / "a.png")
    samples[1].image.convert("RGB").save(d / "b.jpg", quality=95)
    (d / "c.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")  # looks like a PNG, is not one
    (d / "notes.txt").write_text("not an image, not a row")
    samples[0].image.save(d / "sub" / "d.png")
    return d, samples


def rows(path):
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]


def test_batch_writes_a_row_per_image_and_survives_a_bad_file(folder, tmp_path):
    d, samples = folder
    out = tmp_path / "out.jsonl"
    ex = Counting()
    summary = run_batch(d, out, ex, progress=False)
    assert (summary.total, summary.errors, summary.skipped) == (3, 1, 0)
    assert summary.verified + summary.needs_review == 2
    got = {r["id"]: r for r in rows(out)}
    assert sorted(got) == ["a.png", "b.jpg", "c.png"]
    assert got["a.png"]["data"]["total"] == samples[0].truth["receipt"]["total"]
    assert got["a.png"]["status"] == "verified" and got["a.png"]["evidence"]["total"]["box"]
    assert "c.png" in got["c.png"]["error"] and "Traceback" not in got["c.png"]["error"]


def test_a_second_run_skips_done_ids_and_an_interrupted_row_is_redone(folder, tmp_path):
    d, _ = folder
    out = tmp_path / "out.jsonl"
    run_batch(d, out, Counting(), progress=False)
    again = Counting()
    s = run_batch(d, out, again, progress=False)
    assert again.seen == [] and s.skipped == 3 and len(rows(out)) == 3
    # a crash mid-write: the last row is cut short; that image runs again, on a fresh line
    lines = out.read_text().splitlines()
    out.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:25])
    third = Counting()
    run_batch(d, out, third, progress=False)
    assert third.seen == [json.loads(lines[-1])["id"]]
    assert sorted(r["id"] for r in rows_ok(out)) == ["a.png", "b.jpg", "c.png"]
    # error rows are skipped too, unless asked to retry them
    fourth = Counting()
    run_batch(d, out, fourth, retry_errors=True, progress=False)
    assert fourth.seen == ["c.png"]


def rows_ok(path):
    out = []
    for l in path.read_text().splitlines():
        try:
            out.append(json.loads(l))
        except json.JSONDecodeError:
            pass
    return out


def test_recursive_listing_and_ids_relative_to_the_folder(folder):
    d, _ = folder
    assert [p.name for p in find_images(d)] == ["a.png", "b.jpg", "c.png"]
    assert [p.relative_to(d).as_posix() for p in find_images(d, recursive=True)] == ["a.png", "b.jpg", "c.png", "sub/d.png"]


def test_cli_batch_mode(folder, tmp_path, capsys):
    from vlmkit.cli import main

    d, _ = folder
    out = tmp_path / "cli.jsonl"
    assert main(["extract", str(d), "--out", str(out), "--mode", "ocr"]) == 1  # one error row: a non-zero exit
    assert "3 images" in capsys.readouterr().out and len(done_ids(out)) == 3
    assert main(["extract", str(d), str(d / "a.png")]) == 2
    assert "one folder" in capsys.readouterr().err
