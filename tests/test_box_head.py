"""The box head (models/box_head.py), its place in generation, and fitting it (train/box_head.py)."""
import json

import pytest
import torch
from PIL import Image

from tiny import smollm2_tokenizer, tiny_vlm_config
from vlmkit.api import VLM
from vlmkit.config import BoxHeadConfig, VLMConfig
from vlmkit.errors import ModelLoadError
from vlmkit.generation import GenerationConfig, generate_from_embeds
from vlmkit.models.box_head import BoxHead, BoxWriter, box_text, context_window, point_text
from vlmkit.models.lm import LanguageModel
from vlmkit.models.vlm import VisionLanguageModel
from vlmkit.train.box_head import (as_conversation, box_iou, centrality, collect, evaluate, fit, generalized_iou,
                                   reply_boxes, trigger_positions)


def tiny_box_vlm(seed: int = 0) -> VLM:
    torch.manual_seed(seed)
    cfg = tiny_vlm_config()
    cfg.box_head = BoxHeadConfig(width=16, num_heads=2, context_tokens=6)
    cfg.__post_init__()
    model = VisionLanguageModel(cfg, lm=LanguageModel(cfg.lm))
    return VLM(model.eval(), smollm2_tokenizer())


def test_config_derives_sizes_and_round_trips():
    vlm = tiny_box_vlm()
    bh = vlm.cfg.box_head
    # LM width, tower width, 32 px / patch 8, and the LM's 4 x 4 visual tokens (mlp2x_gelu keeps the grid)
    assert (bh.query_dim, bh.vision_dim, bh.grid, bh.token_grid) == (32, 24, 4, 4)
    again = VLMConfig.from_dict(json.loads(json.dumps(vlm.cfg.to_dict())))
    assert again.box_head == bh
    with pytest.raises(ValueError, match="multiple of num_heads"):
        BoxHeadConfig(width=10, num_heads=4)
    with pytest.raises(ValueError, match="end alike"):
        BoxHeadConfig(trigger="<box>", point_trigger="box>")
    # a config saved before points existed loads with the default point trigger
    old = vlm.cfg.to_dict()
    del old["box_head"]["point_trigger"]
    assert VLMConfig.from_dict(old).box_head.point_trigger == "<point>"
    cfg = tiny_vlm_config(keep_cls=True, use_cls=True)
    cfg.box_head = BoxHeadConfig()
    with pytest.raises(ValueError, match="square grid"):
        cfg.__post_init__()
    cfg = tiny_vlm_config()
    cfg.image_token_order, cfg.box_head = "rows+columns", BoxHeadConfig()
    with pytest.raises(ValueError, match="read once"):
        cfg.__post_init__()


def test_iou_giou_and_centrality_values():
    a = torch.tensor([[0.0, 0.0, 0.5, 0.5]])
    assert box_iou(a, a)[0].item() == pytest.approx(1.0)
    b = torch.tensor([[0.25, 0.0, 0.75, 0.5]])
    assert box_iou(a, b)[0].item() == pytest.approx(1 / 3)  # overlap 0.125 of union 0.375
    far = torch.tensor([[0.5, 0.5, 1.0, 1.0]])
    # disjoint: IoU 0, the hull is the whole unit square and the two boxes cover half of it
    assert generalized_iou(a, far).item() == pytest.approx(-0.5)
    head = BoxHead(_sized(BoxHeadConfig(width=8, num_heads=2), grid=4))
    box = torch.tensor([[0.0, 0.0, 0.5, 0.5]])  # the top-left 2 x 2 patches
    t = centrality(head.centres, box, 4).view(4, 4)
    assert (t[:2, :2] > 0).all() and t[2:].eq(0).all() and t[:, 2:].eq(0).all()
    tiny = torch.tensor([[0.6, 0.6, 0.62, 0.62]])  # inside patch (row 2, col 2) but away from its centre
    t = centrality(head.centres, tiny, 4).view(4, 4)
    assert t[2, 2] > 0 and t.count_nonzero() == 1


def _sized(cfg: BoxHeadConfig, grid: int, query_dim: int = 8, vision_dim: int = 6, token_grid: int = 2) -> BoxHeadConfig:
    cfg.query_dim, cfg.vision_dim, cfg.grid, cfg.token_grid = query_dim, vision_dim, grid, token_grid
    return cfg


def test_predict_is_the_most_central_patchs_box_and_prints_in_thousandths():
    head = BoxHead(_sized(BoxHeadConfig(width=8, num_heads=2), grid=4))
    q, w, m, p = torch.randn(3, 8), torch.randn(3, 5, 8), torch.ones(3, 5, dtype=torch.bool), torch.randn(3, 16, 6)
    st = torch.randn(3, 4, 8)  # the LM's states on a 2 x 2 token grid, each covering 2 x 2 patches
    scores, boxes = head(q, w, m, p, st)
    assert scores.shape == (3, 16) and boxes.shape == (3, 16, 4)
    k = scores.argmax(-1)
    assert torch.equal(head.predict(q, w, m, p, st), boxes[torch.arange(3), k].clamp(0, 1))
    # each patch's box holds its own centre: distances are positive
    assert (boxes[..., :2] <= head.centres).all() and (boxes[..., 2:] >= head.centres).all()
    assert box_text(torch.tensor([0.0, 0.1234, 0.5, 1.0])) == "0,123,500,1000</box>"
    assert point_text(torch.tensor([0.0, 0.1234, 0.5, 1.0])) == "2,5</point>"  # centre (250, 562)
    # with self-attention over the patches, a patch's score depends on the others: change one patch, and the
    # scores of the rest move (without it they would not)
    for layers, moves in ((1, True), (0, False)):
        torch.manual_seed(0)
        mixed = BoxHead(_sized(BoxHeadConfig(width=8, num_heads=2, patch_layers=layers), grid=4))
        p2 = p.clone()
        p2[:, 0] += 1
        a, b = mixed(q, w, m, p, st)[0][:, 1:], mixed(q, w, m, p2, st)[0][:, 1:]
        assert (not torch.allclose(a, b)) == moves


def test_context_window_pads_and_hides_image_positions():
    assert context_window([5, -200, -200, 7, 8], 4) == ([0, 0, 7, 8], [False, False, True, True])
    assert context_window([7], 3) == ([0, 0, 7], [False, False, True])
    assert context_window([1, 2], 0) == ([], [])


def test_trigger_positions_only_in_replies():
    trig = [44, 4810, 46]
    ids = [9, 44, 4810, 46, 9, 44, 4810, 46, 3, 44, 4810, 46]
    labels = [-100, -100, -100, -100, -100, 44, 4810, 46, 3, 44, 4810, 46]
    assert trigger_positions(ids, labels, trig) == [7, 11]  # the user's own "<box>" is not a reply


def test_reply_boxes_and_eval_rows():
    row = as_conversation({"image": "x.png", "question": "Where is it?", "answers": ["<box>0,100,500,1000</box>"]})
    assert row["conversations"][0]["value"] == "<image>\nWhere is it?"
    assert [b.tolist() for b in reply_boxes(row)] == [pytest.approx([0.0, 0.1, 0.5, 1.0])]
    two = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "<box>1,2,3,4</box> <box>5,6,7,8</box>"}]}
    assert len(reply_boxes(two)) == 2


def test_fit_learns_to_find_the_marked_patch():
    """Each image has one patch carrying a marker (the query says which of two markers); the box is that patch.
    Position is only in the patch's index, so the head must learn it from its position embeddings."""
    g, n = 4, 512
    torch.manual_seed(0)
    head = BoxHead(_sized(BoxHeadConfig(width=32, num_heads=2), grid=g, query_dim=8, vision_dim=6))
    markers = torch.randn(2, 6) * 3

    def make(count):
        patches = torch.randn(count, g * g, 6) * 0.3
        where = torch.randint(0, g * g, (count, 2))
        where[:, 1] = (where[:, 0] + 1 + torch.randint(0, g * g - 1, (count,))) % (g * g)  # a distinct patch
        which = torch.randint(0, 2, (count,))
        rows = torch.arange(count)
        patches[rows, where[:, 0]] += markers[0]
        patches[rows, where[:, 1]] += markers[1]
        target = where[rows, which]
        x, y = (target % g).float() / g, (target // g).float() / g
        box = torch.stack([x, y, x + 1 / g, y + 1 / g], -1)
        query = torch.nn.functional.one_hot(which, 8).float()
        return {"query": query, "context": torch.zeros(count, 2, dtype=torch.long),
                "context_mask": torch.zeros(count, 2, dtype=torch.bool), "patches": patches,
                "states": torch.zeros(count, 4, 8), "image": torch.arange(count), "box": box}

    embed = torch.nn.Embedding(4, 8).requires_grad_(False)
    train, val = make(n), make(128)
    before = evaluate(head, val, embed)["iou@0.5"]
    history = fit(head, train, embed, steps=400, batch_size=64, lr=3e-3, val=val, every=200, progress=False)
    assert before < 0.2
    assert history[-1]["val_iou@0.5"] > 0.8


def test_writer_fires_after_the_trigger_and_the_hidden_state_matches_teacher_forcing(tmp_path):
    """The box written after "<box>" is the head's prediction from the LM's state at ">", which must equal the state
    a teacher-forced forward of the same tokens gives (the state collect() trains on)."""
    vlm = tiny_box_vlm()
    tok, model = vlm.tokenizer, vlm.model
    trig = tok("<box>", add_special_tokens=False).input_ids
    img = Image.new("RGB", (32, 32), (200, 30, 30))
    msgs = [{"role": "user", "content": [{"type": "image", "image": img}, {"type": "text", "text": "Find the square."}]}]

    def force_trigger(row, ids, logits):  # make the random LM write "<box>" first
        if len(ids) < len(trig):
            logits = torch.full_like(logits, -1e9)
            logits[trig[len(ids)]] = 0
        return logits

    seen = {}
    real_predict = model.box_head.predict

    def spy(query, words, mask, patches, states):
        seen["query"], seen["states"] = query.clone(), states.clone()
        return real_predict(query, words, mask, patches, states)

    model.box_head.predict = spy
    outs = {}
    prompt = vlm.prompt(msgs)
    for use_cache in (True, False):
        cfg = GenerationConfig(max_new_tokens=len(trig) + 25, use_cache=use_cache)
        embeds, mask, positions = vlm._embed_batch([prompt])
        outs[use_cache] = generate_from_embeds(model.lm, embeds, mask, tok, cfg, vlm._eos, None, force_trigger,
                                               positions, vlm._box_writer([prompt]))[0]
        seen[use_cache] = (seen.pop("query"), seen.pop("states"))
    out = outs[True]
    assert out.text.startswith("<box>")
    body = out.text[len("<box>"):].split("</box>")[0]
    assert len(body.split(",")) == 4 and all(0 <= int(v) <= 1000 for v in body.split(","))
    assert outs[False].text == out.text
    for a, b in zip(seen[True], seen[False]):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)

    ids = torch.tensor([prompt.input_ids + trig])
    captured = {}
    h = model.lm._final_norm.register_forward_hook(lambda m, a, o: captured.__setitem__("h", o))
    with torch.no_grad():
        model(ids, pixel_values=vlm.image_processor([img]), logits_to_keep=1)
    h.remove()
    torch.testing.assert_close(seen[True][0], captured["h"][:, -1], atol=1e-4, rtol=1e-4)
    visual = ids[0] == model.cfg.image_token_id
    torch.testing.assert_close(seen[True][1], captured["h"][:, visual], atol=1e-4, rtol=1e-4)

    # under constrained decoding (a logits processor, as a JSON schema sets) the head stays out of the way
    plain = vlm.generate([msgs], GenerationConfig(max_new_tokens=len(trig) + 5), logits_processor=force_trigger)[0]
    assert plain.text.startswith("<box>") and "query" not in seen


def test_without_a_trigger_or_an_image_nothing_is_inserted():
    vlm = tiny_box_vlm()
    img = vlm.cfg.image_token_id
    prompts = [[1] + [img] * 16 + [2], [3, 4]]  # batched left-padded to 20 columns: row 0 starts at column 2
    looked_at = []
    writer = BoxWriter(vlm.model.box_head, vlm.tokenizer, vlm.model.lm.embed_tokens, prompts, ["a.png", None],
                       lambda image: looked_at.append(image) or torch.zeros(16, 24), img)
    hidden = torch.arange(2 * 20 * 32, dtype=torch.float32).view(2, 20, 32)
    writer.read_prompt(hidden)
    assert torch.equal(writer.states[0], hidden[0, 3:19]) and writer.states[1] is None
    assert writer(0, [5], "hello", torch.zeros(32)) is None
    assert looked_at == []  # the tower runs only once a row writes the trigger
    assert writer(0, [5], "a <box>", torch.zeros(32))  # tokens of "x1,y1,x2,y2</box>"
    assert looked_at == ["a.png"]
    assert writer(0, [5, 6], "a <box>1,2,3,4</box>, b <box>", torch.ones(32))  # a second box: the same patches
    assert looked_at == ["a.png"]
    assert writer(1, [5], "a <box>", torch.zeros(32)) is None
    point = vlm.tokenizer.decode(writer(0, [5], "a <point>", torch.zeros(32)))  # the same box, as its centre's digits
    assert len(point) == len("x,y</point>") and point.endswith("</point>") and point[0].isdigit() and point[2].isdigit()
    assert writer(1, [5], "a <point>", torch.zeros(32)) is None


def test_save_load_round_trip_is_strict(tmp_path):
    vlm = tiny_box_vlm()
    vlm.model.save_pretrained(tmp_path, tokenizer=vlm.tokenizer)
    again = VisionLanguageModel.from_pretrained(tmp_path)
    for k, v in vlm.model.box_head.state_dict().items():
        assert torch.equal(v, again.box_head.state_dict()[k]), k
    # the same weights under a config without the head: the head's keys are unexpected, an error
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["box_head"] = None
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="box_head"):
        VisionLanguageModel.from_pretrained(tmp_path)


def test_collect_reads_each_reply_box(tmp_path):
    vlm = tiny_box_vlm()
    Image.new("RGB", (32, 32), (0, 0, 255)).save(tmp_path / "a.png")
    rows = [{"image": "a.png", "conversations": [
        {"from": "human", "value": "<image>\nFind the square."}, {"from": "gpt", "value": "<box>0,0,500,500</box>"},
        {"from": "human", "value": "And the circle?"}, {"from": "gpt", "value": "<box>500,500,1000,1000</box>"}]},
        {"image": "a.png", "question": "Where is it?", "answers": ["<box>100,100,200,200</box>"]},
        {"image": "missing.png", "question": "Where is it?", "answers": ["<box>100,100,200,200</box>"]}]
    data = collect(vlm.model, vlm.tokenizer, vlm.image_processor, rows, tmp_path, progress=False)
    assert data["image"].tolist() == [0, 0, 1] and int(data["skipped"]) == 1
    assert data["box"][1].tolist() == pytest.approx([0.5, 0.5, 1.0, 1.0])
    assert data["query"].shape == (3, 32) and data["patches"].shape == (2, 16, 24) and data["states"].shape == (2, 16, 32)
    assert data["context"].shape == (3, 6)
    # the window ends at ">" of the trigger
    gt = vlm.tokenizer("<box>", add_special_tokens=False).input_ids
    assert data["context"][0, -3:].tolist() == gt and data["context_mask"][0, -3:].all()


def test_collect_reads_points_with_their_places(tmp_path):
    """A reply that writes points gives the head its objects' boxes as "places"; boxes and points are read in the
    order they are written, and a point in an untrained prefix ("given") is no target."""
    vlm = tiny_box_vlm()
    Image.new("RGB", (32, 32), (0, 0, 255)).save(tmp_path / "a.png")
    chain = {"from": "gpt", "value": "the square <point>2,2</point> and the circle <box>500,500,900,900</box> so",
             "places": [[100, 100, 300, 300], [500, 500, 900, 900]]}
    rows = [{"image": "a.png", "conversations": [{"from": "human", "value": "<image>\nIs the square left of the circle?"},
                                                 chain]}]
    data = collect(vlm.model, vlm.tokenizer, vlm.image_processor, rows, tmp_path, progress=False)
    assert data["box"].flatten().tolist() == pytest.approx([0.1, 0.1, 0.3, 0.3, 0.5, 0.5, 0.9, 0.9])
    # the window ends at the point trigger as it tokenizes after a word
    assert data["context"][0, -3:].tolist() == vlm.tokenizer(" <point>", add_special_tokens=False).input_ids
    given = {"from": "gpt", "given": "the square <point>2,2</point> and the circle <point>7,7</point> so the square is",
             "value": " left of the circle: yes", "places": [[100, 100, 300, 300], [500, 500, 900, 900]]}
    rows[0]["conversations"][1] = given  # its triggers are not trained, so they and its places disagree: skipped
    with pytest.raises(ValueError, match="no box answers"):
        collect(vlm.model, vlm.tokenizer, vlm.image_processor, rows, tmp_path, progress=False)


def test_fit_box_head_script_end_to_end(model_dir, tmp_path, monkeypatch):
    """scripts/fit_box_head.py on the tiny model: features cached as safetensors, a head trained and saved with the
    model, which loads strictly and refuses a second head."""
    import repo_file

    script = repo_file.load("scripts/fit_box_head.py")
    for i, colour in enumerate(["red", "green", "blue"]):
        Image.new("RGB", (32, 32), colour).save(tmp_path / f"{i}.png")
    rows = [{"image": f"{i}.png", "conversations": [{"from": "human", "value": "<image>\nFind the square."},
                                                    {"from": "gpt", "value": f"<box>{100 * i},0,{100 * i + 300},500</box>"}]}
            for i in range(3)]
    (tmp_path / "g.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out, cache = tmp_path / "out", tmp_path / "cache"
    argv = ["fit_box_head.py", str(model_dir), "--train", str(tmp_path / "g.jsonl"), "--val", str(tmp_path / "g.jsonl"),
            "--out", str(out), "--cache", str(cache), "--steps", "4", "--every", "2", "--width", "16", "--no-progress"]
    monkeypatch.setattr("sys.argv", argv)
    script.main()
    records = [json.loads(line) for line in (out / "box_head_metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4] and all(0 <= r["val_iou@0.5"] <= 1 for r in records)
    key = script.model_key(str(model_dir))
    assert sorted(p.name for p in cache.iterdir()) == [f"train-{tmp_path.name}-g-3000-{key}.safetensors",
                                                       f"val-{tmp_path.name}-g-0-{key}.safetensors"]
    model = VisionLanguageModel.from_pretrained(out)
    assert model.box_head is not None and model.cfg.box_head.width == 16
    monkeypatch.setattr("sys.argv", ["fit_box_head.py", str(out), "--train", str(tmp_path / "g.jsonl"), "--out", str(tmp_path / "o2")])
    with pytest.raises(SystemExit, match="already has a box head"):
        script.main()

    # --refit: the model's own head trains further on features of the new weights from two files (6 boxes)
    (tmp_path / "h.jsonl").write_text((tmp_path / "g.jsonl").read_text())
    seen = {}
    import vlmkit.train.box_head as box_train
    monkeypatch.setattr(box_train, "fit", lambda head, train, *a, **k: seen.update(head=head, n=len(train["box"]),
                                                                                   images=train["image"].tolist()))
    monkeypatch.setattr("sys.argv", ["fit_box_head.py", str(out), "--refit", "--train", str(tmp_path / "g.jsonl"),
                                     str(tmp_path / "h.jsonl"), "--out", str(tmp_path / "o3"), "--cache", str(cache),
                                     "--no-progress"])
    script.main()
    assert seen["n"] == 6 and seen["images"] == [0, 1, 2, 3, 4, 5]
    torch.testing.assert_close(seen["head"].state_dict(), {k: v.float() for k, v in model.box_head.state_dict().items()})
    assert len(list(cache.glob(f"*-{script.model_key(str(out))}.safetensors"))) == 2  # not the first model's
    monkeypatch.setattr("sys.argv", ["fit_box_head.py", str(model_dir), "--refit", "--train", str(tmp_path / "g.jsonl"),
                                     "--out", str(tmp_path / "o4")])
    with pytest.raises(SystemExit, match="no box head"):
        script.main()


def test_a_training_stage_keeps_a_fitted_head_frozen(tmp_path, caplog):
    """LoRA stages that start from a model with a box head (session 19's grounded relations) train no head weight,
    and say so in one line, not one per tensor."""
    from vlmkit.train.config import from_dict
    from vlmkit.train.stages import build, param_groups

    vlm = tiny_box_vlm()
    vlm.model.save_pretrained(tmp_path / "vlm", tokenizer=vlm.tokenizer)
    cfg = from_dict({"stage": "instruct", "out_dir": str(tmp_path / "run"), "model": {"init": str(tmp_path / "vlm")},
                     "data": {"train": [str(tmp_path / "none.jsonl")]}, "lora": {"enabled": True, "r": 2}})
    stage = build(cfg)
    with caplog.at_level("WARNING", logger="vlmkit.train.stages"):
        groups, _ = param_groups(stage, cfg)
    trained = {id(p) for g in groups for p in g["params"]}
    head = list(stage.model.box_head.parameters())
    assert head and not any(p.requires_grad or id(p) in trained for p in head)
    assert trained  # the adapters still train
    warned = [r.getMessage() for r in caplog.records if "no tower" in r.getMessage()]
    assert warned == [f"{len(head)} parameters belong to no tower and stay frozen: box_head"]
