"""scripts/make_shape_shards.sh: shards that never share a scene, each with its derived conversations, and a
training recipe's glob that reads them all."""
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(*args):
    env = dict(os.environ, PYTHON=sys.executable)
    return subprocess.run(["bash", str(REPO / "scripts/make_shape_shards.sh"), *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=300)


def test_shards_are_disjoint_complete_and_read_by_glob(tmp_path):
    from vlmkit.train.data import load_records

    root = tmp_path / "shards"
    r = _run(2, 6, root)
    assert r.returncode == 0, r.stderr
    ids = {}
    for k in (0, 1):
        d = root / f"s{k}"
        assert {"conversations.jsonl", "binding.jsonl", "counting.jsonl", "spatial.jsonl", "grounding.jsonl"} <= {p.name for p in d.iterdir()}
        ids[k] = [json.loads(line)["id"] for line in (d / "truth.jsonl").read_text().splitlines()]
        assert len(ids[k]) == 6
    assert not set(ids[0]) & set(ids[1])
    images = {json.loads(line)["image"] for d in (root / "s0", root / "s1")
              for line in (d / "truth.jsonl").read_text().splitlines()}
    assert len(images) == 12  # different file names too: a scene is never copied across

    recs = load_records([str(root / "*" / "counting.jsonl")])
    assert len(recs.rows) == 12 and all((root_ / row["image"]).is_file() for row, root_ in zip(recs.rows, recs.roots))

    stamp = (root / "s0" / "truth.jsonl").stat().st_mtime_ns
    (root / "s1" / "grounding.jsonl").unlink()  # an interrupted shard: its last file is missing
    again = _run(2, 6, root)
    assert again.returncode == 0
    assert (root / "s0" / "truth.jsonl").stat().st_mtime_ns == stamp  # finished: kept
    assert (root / "s1" / "grounding.jsonl").is_file()  # unfinished: made again


def test_a_failed_shard_fails_the_script_and_names_its_log(tmp_path):
    r = _run(1, 0, tmp_path / "shards")  # --n 0 is refused by the generator
    assert r.returncode != 0 and "shard 0 failed" in r.stderr
