"""Connector zoo: token counts at several resolutions, parameter counts against closed-form formulas,
config round-trips, gradients only where trainable, and every connector (and the Flamingo fusion
mode) learning a tiny image -> answer task through a frozen LM."""
import json

import pytest
import torch

from hf_tiny import tiny_llama_config
from vlmkit.config import ConnectorConfig, FusionConfig, LMConfig, VisionConfig, VLMConfig
from vlmkit.models.connectors import build_connector, count_parameters
from vlmkit.models.fusion import FlamingoFusion
from vlmkit.models.lm import LanguageModel, hf_config_dict
from vlmkit.models.vision import VisionTower
from vlmkit.models.vlm import VisionLanguageModel

KINDS = ("linear", "mlp2x_gelu", "pixel_shuffle", "qformer", "perceiver", "cabstractor")
DV, DL = 32, 64  # tower and LM widths


def small(kind: str, **kw) -> ConnectorConfig:
    """Resamplers kept shallow so tests stay fast."""
    if kind in ("qformer", "perceiver"):
        kw = dict(num_queries=8, num_layers=1, num_heads=4) | kw
    if kind == "cabstractor":
        kw = dict(num_queries=9, num_layers=1) | kw
    return ConnectorConfig(kind=kind, in_dim=DV, out_dim=DL, **kw)


def tiny_lm(head_std: float | None = None) -> LanguageModel:
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(tiny_llama_config())
    if head_std:
        # a random head at the usual 0.02 caps the largest logit near 1.3, so no input could make a
        # frozen LM confident; a pretrained head can be, which this stands in for
        torch.nn.init.normal_(model.lm_head.weight, std=head_std)
    return LanguageModel(LMConfig(source="tiny", weights="checkpoint", hf_config=hf_config_dict(model.config)), model)


def tiny_vlm(connector: ConnectorConfig, fusion: str = "none", head_std: float | None = None) -> VisionLanguageModel:
    lm = tiny_lm(head_std)
    cfg = VLMConfig(vision=VisionConfig(image_size=16, patch_size=4, hidden_size=DV, num_layers=1, num_heads=2),
                    connector=connector, lm=lm.cfg, fusion=FusionConfig(kind=fusion, every=1))
    return VisionLanguageModel(cfg, lm=lm)


# ---- shapes and token counts ----

@pytest.mark.parametrize("kind", KINDS)
def test_token_counts_at_several_resolutions(kind):
    tower = VisionTower(VisionConfig(image_size=16, patch_size=4, hidden_size=DV, num_layers=1, num_heads=2))
    cfg = small(kind)
    conn = build_connector(cfg)
    expected = {  # tower tokens 16, 64, 144 (grids 4, 8, 12) -> tokens to the LM
        "linear": [16, 64, 144], "mlp2x_gelu": [16, 64, 144], "pixel_shuffle": [4, 16, 36],
        "qformer": [8, 8, 8], "perceiver": [8, 8, 8], "cabstractor": [9, 9, 9],
    }[kind]
    for size, n in zip((16, 32, 48), expected):
        feats = tower.forward_features(torch.randn(2, 3, size, size))
        out = conn(feats)
        assert out.shape == (2, n, DL)
        assert cfg.num_output_tokens(tower.cfg.tokens_at(size)) == n


def test_resampler_defaults_follow_the_papers():
    for kind, queries, layers in (("qformer", 32, 6), ("perceiver", 64, 6), ("cabstractor", 144, 3)):
        c = ConnectorConfig(kind=kind, in_dim=1024, out_dim=4096)
        assert (c.num_queries, c.num_layers, c.hidden_dim) == (queries, layers, 1024)
        assert c.num_output_tokens(576) == c.num_output_tokens(2304) == queries
    assert ConnectorConfig(kind="qformer", in_dim=1024, out_dim=4096).num_heads == 16


def test_bad_shapes_are_clear_errors():
    with pytest.raises(ValueError, match="not a square"):
        ConnectorConfig(kind="cabstractor", in_dim=DV, out_dim=DL, num_queries=10)
    with pytest.raises(ValueError, match="divisible by 2"):
        ConnectorConfig(kind="pixel_shuffle", in_dim=DV, out_dim=DL).num_output_tokens(21 * 21)
    with pytest.raises(ValueError, match="square patch grid"):
        build_connector(small("cabstractor"))(torch.randn(1, 17, DV))  # CLS kept: not a grid
    with pytest.raises(ValueError, match="tokens_per_cell"):
        ConnectorConfig(kind="mlp2x_gelu", in_dim=DV, out_dim=DL, tokens_per_cell=2)
    with pytest.raises(ValueError, match="tokens_per_cell"):
        ConnectorConfig(kind="pixel_shuffle", in_dim=DV, out_dim=DL, tokens_per_cell=0)


def test_pixel_shuffle_with_two_tokens_per_cell_writes_each_cells_tokens_side_by_side():
    torch.manual_seed(0)
    two = build_connector(ConnectorConfig(kind="pixel_shuffle", in_dim=DV, out_dim=DL, scale_factor=2, tokens_per_cell=2))
    x = torch.randn(3, 16, DV)  # a 4x4 grid -> 4 cells -> 8 tokens
    y = two(x)
    assert y.shape == (3, 8, DL) and two.cfg.num_output_tokens(16) == 8
    flat = two.proj(two.merge(x))  # [3, 4 cells, 2 * DL]
    torch.testing.assert_close(y[:, 2], flat[:, 1, :DL])  # cell 1's first token,
    torch.testing.assert_close(y[:, 3], flat[:, 1, DL:])  # then its second, before cell 2's


def test_place_phrases_split_the_grid_in_thirds_symmetrically():
    from vlmkit.models.connectors import place_phrases

    grid = [place_phrases(8)[i * 8:(i + 1) * 8] for i in range(8)]
    assert grid[0][0] == "top left" and grid[0][7] == "top right" and grid[7][0] == "bottom left"
    assert grid[3] == ["left"] * 3 + ["centre"] * 2 + ["right"] * 3  # 3 / 2 / 3 cells, by each cell's centre
    assert [r[0] for r in grid] == ["top left"] * 3 + ["left"] * 2 + ["bottom left"] * 3
    assert place_phrases(2) == ["top left", "top right", "bottom left", "bottom right"]
    assert place_phrases(3)[4] == "centre" and place_phrases(1) == ["centre"]


@pytest.mark.parametrize("k", [1, 2])
def test_position_words_mix_each_cells_place_into_its_tokens(k):
    """token = (1 - w) * proj(cell) + w * place(cell), for each of a cell's k tokens; another grid resamples the
    table; w = 0 is the plain connector with no new weight."""
    torch.manual_seed(0)
    cfg = ConnectorConfig(kind="pixel_shuffle", in_dim=DV, out_dim=DL, scale_factor=2, tokens_per_cell=k, grid_size=4)
    conn = build_connector(cfg)
    assert "pos_embed" not in conn.state_dict()
    x = torch.randn(3, 16, DV)  # [B, 4x4 patches, D_v] -> 4 cells
    plain = conn(x)
    table = torch.randn(4, DL)
    conn.set_place_table(table, 0.25)
    assert cfg.position_words == 0.25 and conn.state_dict()["pos_embed"].shape == (1, 4, DL)
    y = conn(x)  # [3, 4 * k, DL]
    torch.testing.assert_close(y, 0.75 * plain + 0.25 * table.repeat_interleave(k, 0))
    big = conn(torch.randn(1, 64, DV))  # an 8x8 grid: 16 cells, the 2x2 table resampled
    assert big.shape == (1, 16 * k, DL)
    with pytest.raises(ValueError, match=r"\[4, 64\] table"):
        conn.set_place_table(torch.randn(9, DL), 0.25)
    rebuilt = build_connector(cfg)  # a saved config builds the table's slot, so strict loading finds its weight
    rebuilt.load_state_dict(conn.state_dict())
    torch.testing.assert_close(rebuilt(x), y)


def test_position_words_are_a_pixel_shuffle_weight_below_one():
    with pytest.raises(ValueError, match="position_words"):
        ConnectorConfig(kind="mlp2x_gelu", in_dim=DV, out_dim=DL, position_words=0.5)
    with pytest.raises(ValueError, match="position_words"):
        ConnectorConfig(kind="pixel_shuffle", in_dim=DV, out_dim=DL, position_words=1.0)
    with pytest.raises(ValueError, match="grid_size"):
        build_connector(ConnectorConfig(kind="pixel_shuffle", in_dim=DV, out_dim=DL, position_words=0.5))


# ---- parameter counts, from the papers' structure written out by hand ----

def expected_params(c: ConnectorConfig) -> int:
    Dv, Dl, H, K, L = c.in_dim, c.out_dim, c.hidden_dim, c.num_queries, c.num_layers
    M = int(H * c.mlp_ratio)
    ln = lambda d: 2 * d
    mlp = lambda d, m, b: ln(d) + 2 * d * m + (m + d if b else 0)  # LayerNorm, Linear, GELU, Linear
    if c.kind == "linear":
        return Dv * Dl + Dl
    if c.kind == "mlp2x_gelu":
        return Dv * c.hidden_dim + c.hidden_dim + c.hidden_dim * Dl + Dl
    if c.kind == "pixel_shuffle":
        d_in, d_out = Dv * c.scale_factor**2, Dl * c.tokens_per_cell
        return (d_in * H + H + H * d_out + d_out) if H else d_in * d_out + d_out
    if c.kind == "qformer":
        self_attn = ln(H) + (H * H + H) + (H * 2 * H + 2 * H) + (H * H + H)
        cross_attn = ln(H) + ln(Dv) + (H * H + H) + (Dv * 2 * H + 2 * H) + (H * H + H)
        return K * H + L * (self_attn + cross_attn + mlp(H, M, True)) + ln(H) + H * Dl + Dl
    if c.kind == "perceiver":
        in_proj = 0 if H == Dv else Dv * H + H
        layer = ln(H) + ln(H) + 4 * H * H + mlp(H, M, False)  # q, kv (2H^2), out: no biases
        return in_proj + K * H + L * layer + ln(H) + H * Dl + Dl
    if c.kind == "cabstractor":
        def reg(i, o):  # 1x1, LN, depthwise 3x3, LN, squeeze-excite, 1x1, LN, shortcut
            se = round(i * 0.25)
            short = 0 if i == o else i * o + ln(o)
            return i * o + ln(o) + 9 * o + ln(o) + (o * se + se + se * o + o) + o * o + ln(o) + short
        return reg(Dv, H) + (2 * L - 1) * reg(H, H) + (H * Dl + Dl) + (Dl * Dl + Dl)
    raise AssertionError(c.kind)


@pytest.mark.parametrize("cfg", [
    small("linear"), small("mlp2x_gelu"), small("mlp2x_gelu", hidden_dim=40), small("pixel_shuffle", scale_factor=3),
    small("pixel_shuffle", hidden_dim=40), small("pixel_shuffle", hidden_dim=40, tokens_per_cell=2),
    small("qformer"), small("qformer", hidden_dim=48, num_layers=2, num_queries=5),
    small("perceiver"), small("perceiver", hidden_dim=48, num_layers=3, mlp_ratio=2.0),
    small("cabstractor"), small("cabstractor", hidden_dim=40, num_layers=2, num_queries=16),
], ids=lambda c: f"{c.kind}-H{c.hidden_dim}-L{c.num_layers}")
def test_parameter_counts_match_closed_form(cfg):
    assert count_parameters(build_connector(cfg)) == expected_params(cfg)


def test_flamingo_block_parameters_match_closed_form():
    D, L, every, ff = 64, 8, 3, 4
    fusion = FlamingoFusion(FusionConfig(kind="flamingo", every=every, ff_mult=ff), D, L)
    assert fusion.layer_ids == [2, 5]  # before layers every-1, 2*every-1 (OpenFlamingo's placement)
    per_block = 2 * D + 2 * D + 4 * D * D + 1 + (2 * D + 2 * ff * D * D) + 1  # norms, q/kv/out, gate, ffw, gate
    assert count_parameters(fusion) == 2 * per_block + D  # + the <image> marker embedding


# ---- configs ----

@pytest.mark.parametrize("kind", KINDS + ("flamingo",))
def test_config_json_roundtrip(kind):
    fused = kind == "flamingo"
    cfg = VLMConfig(connector=ConnectorConfig(kind="perceiver" if fused else kind, num_queries=16 if not fused else 0),
                    lm=LMConfig(hf_config=dict(hidden_size=64, vocab_size=320, num_hidden_layers=4, num_attention_heads=4)),
                    fusion=FusionConfig(kind="flamingo" if fused else "none", every=2, last_image_only=True))
    again = VLMConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert again.connector.num_output_tokens(196) == cfg.connector.num_output_tokens(196)
    assert again.image_seq_len == (1 if fused else cfg.connector.num_output_tokens(196))


def test_configs_written_before_the_zoo_still_load():
    d = VLMConfig(lm=LMConfig(hf_config=dict(hidden_size=64, vocab_size=320, num_hidden_layers=2, num_attention_heads=4))).to_dict()
    del d["fusion"]
    for k in ("num_queries", "num_layers", "num_heads", "mlp_ratio"):
        del d["connector"][k]
    cfg = VLMConfig.from_dict(d)
    assert cfg.fusion.kind == "none" and cfg.connector.kind == "mlp2x_gelu" and cfg.image_seq_len == 196


# ---- gradients and training ----

@pytest.mark.parametrize("kind", KINDS + ("flamingo",))
def test_gradients_reach_only_trainable_parts(kind):
    fused = kind == "flamingo"
    model = tiny_vlm(small("perceiver" if fused else kind), fusion="flamingo" if fused else "none")
    model.vision.requires_grad_(False)
    model.lm.requires_grad_(False)
    n = model.cfg.image_seq_len
    ids = torch.tensor([[3, 4] + [model.cfg.image_token_id] * n + [5, 6, 7]])
    labels = ids.masked_fill(ids < 0, -100)
    model(ids, pixel_values=torch.randn(1, 3, 16, 16), labels=labels).loss.backward()
    assert all(p.grad is None for p in model.vision.parameters())
    assert all(p.grad is None for p in model.lm.parameters())
    trainable = list(model.connector.named_parameters()) + (list(model.fusion.named_parameters()) if fused else [])
    assert all(p.grad is not None for _, p in trainable)
    if fused:  # gates at 0 pass no gradient to the blocks yet; the gates themselves must get one
        assert all(float(p.grad.abs().sum()) > 0 for name, p in trainable if name.endswith("_gate"))
    else:
        assert all(float(p.grad.abs().sum()) > 0 for _, p in trainable)


COLOURS = torch.tensor([[1.0, -1, -1], [-1, 1, -1], [-1, -1, 1], [1, 1, 1]])  # class c -> a colour; answer token 10 + c


def _batch(model, y, g):
    pixels = COLOURS[y][:, :, None, None] + 0.3 * torch.randn(len(y), 3, 16, 16, generator=g)
    ids = torch.tensor([[3, 4] + [model.cfg.image_token_id] * model.cfg.image_seq_len + [5, 0]] * len(y))
    ids[:, -1] = 10 + y
    labels = torch.full_like(ids, -100)
    labels[:, -1] = ids[:, -1]  # supervise the answer only
    return ids, pixels, labels


@pytest.mark.parametrize("kind", KINDS + ("flamingo",))
def test_each_connector_learns_a_tiny_task_through_a_frozen_lm(kind):
    fused = kind == "flamingo"
    ck = "perceiver" if fused else kind
    kw = {"num_queries": 4} if ck in ("qformer", "perceiver", "cabstractor") else {}
    model = tiny_vlm(small(ck, **kw), fusion="flamingo" if fused else "none", head_std=0.2)
    model.vision.requires_grad_(False)
    model.lm.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    held_out = _batch(model, torch.arange(4).repeat_interleave(8), g)

    def evaluate():
        with torch.no_grad():
            ids, px, labels = held_out
            out = model(ids, pixel_values=px, labels=labels)
            return out.loss.item(), (out.logits[:, -2].argmax(-1) == ids[:, -1]).float().mean().item()

    before, _ = evaluate()
    for _ in range(120):
        ids, px, labels = _batch(model, torch.randint(0, 4, (8,), generator=g), g)
        loss = model(ids, pixel_values=px, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    after, acc = evaluate()
    assert after <= 0.5 * before, (before, after)
    # an LM blind to the image cannot beat chance (25%) on balanced classes
    assert acc >= 0.9, (before, after, acc)


# ---- vlmkit tokens --connector ----

def _tokens(argv, capsys) -> str:
    import argparse

    from vlmkit.cli import tokens

    parser = argparse.ArgumentParser()
    tokens.register(parser.add_subparsers())
    args = parser.parse_args(["tokens", *argv])
    assert args.func(args) == 0
    return capsys.readouterr().out


def test_tokens_cli_compares_every_connector(capsys):
    from vlmkit.processing.budget import LM_PRESETS

    out = _tokens(["--connector", "all", "--vision", "vlmkit-vit", "--lm", "smollm2-135m", "--image-size", "336", "--dtype-bytes", "4"], capsys)
    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:] if line.split() and line.split()[0] in
            ("linear", "mlp2x_gelu", "pixel_shuffle", "qformer", "perceiver", "cabstractor", "flamingo")}
    assert len(rows) == 7
    assert rows["linear"][1:4] == ["441", "441", f"{192 * 576 + 576:,}"]  # 21 x 21 patches at 336 px / 16
    assert rows["pixel_shuffle"][1] == "-" and "divisible by 2" in " ".join(rows["pixel_shuffle"])  # 21 is odd
    assert rows["qformer"][1:3] == ["32", "32"] and rows["cabstractor"][1:3] == ["144", "144"]
    perceiver = ConnectorConfig(kind="perceiver", in_dim=192, out_dim=576)
    with torch.device("meta"):  # counts only
        fusion = FlamingoFusion(FusionConfig(kind="flamingo"), 576, LM_PRESETS["smollm2-135m"]["num_hidden_layers"])
    assert rows["flamingo"][1:4] == ["1", "64", f"{expected_params(perceiver) + count_parameters(fusion):,}"]


def test_tokens_cli_single_flamingo(capsys):
    out = _tokens(["--connector", "flamingo", "--lm", "smollm2-135m", "--dtype-bytes", "4"], capsys)
    assert "visual tokens to the LM (per image)    1" in out
    assert "visual tokens read by cross-attention  64" in out


@pytest.mark.parametrize("kind", ["linear", "mlp2x_gelu", "pixel_shuffle"])
def test_pre_norm_makes_the_connector_blind_to_the_towers_scale(kind):
    """pre_norm=True: a tower whose features are 400x larger hands the LM the same tokens; off, no new weights."""
    from vlmkit.config import ConnectorConfig
    from vlmkit.models.connectors import build_connector

    torch.manual_seed(0)
    on = build_connector(ConnectorConfig(kind=kind, in_dim=8, out_dim=12, pre_norm=True))
    off = build_connector(ConnectorConfig(kind=kind, in_dim=8, out_dim=12))
    x = torch.randn(2, 16, 8)  # [B, N (a 4x4 grid), D_v]
    assert torch.allclose(on(x), on(400 * x), atol=1e-4)
    assert not torch.allclose(off(x), off(400 * x), atol=1e-4)  # without it, the scale goes straight through
    assert set(on.state_dict()) - set(off.state_dict()) == {"norm.weight", "norm.bias"}
