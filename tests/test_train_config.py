"""TOML configs with --set overrides, stage defaults, clear one-line errors, HF datasets from local files, the CLI."""
import json
from pathlib import Path

import pytest
from test_train_common import COLOURS, make_images, vlm_config

from vlmkit.cli import main
from vlmkit.train.config import ConfigError, load_config


def test_toml_overrides_and_stage_defaults(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('stage = "align"\n[train]\nlr = 1e-3\nbatch_size = 4\n[lm]\nlr = 5e-5\n')
    cfg = load_config(p, ["train.lr=2e-4", "connector.lr=1e-2", "lora.target_modules=[\"q_proj\"]", "out_dir=runs/x"])
    assert cfg.train.lr == 2e-4 and cfg.connector.lr == 1e-2 and cfg.lm.lr == 5e-5 and cfg.vision.lr == 2e-4
    assert (cfg.vision.freeze, cfg.connector.freeze, cfg.lm.freeze) == (True, False, True)  # stage 1: connector only
    assert cfg.lora.target_modules == ["q_proj"] and cfg.out_dir == "runs/x"
    cfg2 = load_config(p, ["stage=instruct", "lora.enabled=true"])
    assert (cfg2.vision.freeze, cfg2.connector.freeze, cfg2.lm.freeze) == (True, False, False)
    assert (cfg2.lora.r, cfg2.lora.alpha, cfg2.lora.target_modules) == (16, 32, ["q_proj", "v_proj"])
    assert load_config(p, ["stage=instruct", "vision.freeze=false"]).vision.freeze is False
    yml = tmp_path / "c.yaml"
    yml.write_text("stage: contrastive\ntrain:\n  lr: 0.001\n")
    assert load_config(yml).stage == "contrastive"


@pytest.mark.parametrize("override, message", [
    (["train.lrr=1"], "unknown config key.*train.lrr"),
    (["train.lr=fast"], "train.lr must be a number"),
    (["stage=pretrain"], "stage must be one of"),
    (["stage=align", "lora.enabled=true"], "applies to stage"),
    (["nonsense"], "KEY=VALUE"),
])
def test_bad_config_is_a_clear_error(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, override)


def test_cli_train_and_plot(tmp_path, capsys):
    cfg = vlm_config(tmp_path, stage="align")
    p = tmp_path / "c.json"
    p.write_text(json.dumps(cfg.to_dict()))
    assert main(["train", str(p), "--set", "train.max_steps=2", "--out", str(tmp_path / "cli-run"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "trained 2 steps on 8 samples" in out and "skipped samples: none" in out
    saved = json.loads((tmp_path / "cli-run" / "final" / "config.json").read_text())
    assert saved["lm"]["weights"] == "checkpoint"  # the tiny test LM lives in the checkpoint
    assert main(["plot", str(tmp_path / "cli-run")]) == 0
    assert (tmp_path / "cli-run" / "loss.png").is_file()
    assert main(["train", str(tmp_path / "missing.toml")]) == 2
    assert main(["train", str(p), "--set", "train.bogus=1"]) == 2
    err = capsys.readouterr().err
    assert err.count("vlmkit: error:") == 2 and "Traceback" not in err


def test_hf_parquet_and_imagefolder(tmp_path):
    import datasets

    from vlmkit.train.data import load_records
    from vlmkit.train.collate import CaptionEncoder
    from vlmkit.processing.images import ImageProcessor

    make_images(tmp_path / "folder")
    (tmp_path / "folder" / "metadata.jsonl").write_text(
        "".join(json.dumps({"file_name": f"{c}.png", "caption": f"a {c} square"}) + "\n" for c in COLOURS))
    recs = load_records([str(tmp_path / "folder")], "hf", text_column="caption")
    assert len(recs.rows) == 4 and {r["text"] for r in recs.rows} == {f"a {c} square" for c in COLOURS}

    ds = datasets.Dataset.from_dict({"image": [str(tmp_path / "folder" / f"{c}.png") for c in COLOURS],
                                     "text": list(COLOURS)}).cast_column("image", datasets.Image())
    ds.to_parquet(str(tmp_path / "train.parquet"))
    recs = load_records([str(tmp_path / "train.parquet")])
    enc = CaptionEncoder(ImageProcessor(16, (0.5,) * 3, (0.5,) * 3))
    samples = [enc(r, root) for r, root in zip(recs.rows, recs.roots)]
    red = samples[list(COLOURS).index("red")]
    assert red["text"] == "red" and red["pixel_values"].shape == (3, 16, 16)
    assert red["pixel_values"][0].mean() > 0.5 > red["pixel_values"][2].mean()  # decoded from the parquet bytes


def test_data_globs_expand_in_sorted_order_and_resolve_images_per_shard(tmp_path):
    from vlmkit.train.data import load_records

    for shard in ("s1", "s0"):  # written out of order: the run must not depend on it
        d = tmp_path / shard
        d.mkdir()
        (d / "captions.jsonl").write_text(json.dumps({"id": shard, "image": "images/a.png", "text": shard}) + "\n")
    recs = load_records([str(tmp_path / "s*" / "captions.jsonl"), str(tmp_path / "s1" / "captions.jsonl")])
    assert [r["id"] for r in recs.rows] == ["s0", "s1", "s1"]
    assert recs.roots == [(tmp_path / "s0").resolve(), (tmp_path / "s1").resolve(), (tmp_path / "s1").resolve()]
    with pytest.raises(ConfigError, match="nothing matches"):
        load_records([str(tmp_path / "t*" / "captions.jsonl")])


ROOT = Path(__file__).resolve().parents[1]


def _recipe_commands():
    """Every recipe, with each `vlmkit train RECIPE --set ...` line its header documents (and the bare recipe)."""
    import shlex

    cases = []
    for path in sorted((ROOT / "recipes").rglob("*.toml")):
        rel = path.relative_to(ROOT)
        cases.append((str(rel), []))
        for line in path.read_text().splitlines():
            words = shlex.split(line.lstrip("# ")) if line.startswith("#") and f"train {rel}" in line else []
            if "--set" in words:
                cases.append((str(rel), [words[i + 1] for i, w in enumerate(words) if w == "--set"]))
    return cases


@pytest.mark.parametrize("rel, overrides", _recipe_commands(), ids=lambda v: v if isinstance(v, str) else ",".join(v))
def test_every_recipe_and_its_documented_overrides_parse(rel, overrides):
    """A renamed config key must not leave a recipe (or the command in its header) that fails only when a GPU run
    starts; the scripts a recipe's header runs must exist."""
    import re

    from vlmkit.config import VLMConfig

    cfg = load_config(ROOT / rel, overrides)
    spec = cfg.model
    layout = {k: getattr(spec, k) for k in ("image_positions", "image_row_separator", "image_token_order")
              if getattr(spec, k) is not None}
    if layout:  # VLMConfig checks these values and their combinations
        VLMConfig(**layout)
    for script in re.findall(r"scripts/[\w./-]+\.(?:py|sh)", (ROOT / rel).read_text()):  # not make_${k}_data.py
        assert (ROOT / script).is_file(), f"{rel} names {script}, which does not exist"
