"""scripts/fit_connector.py's pieces: which patches each visual token merges, the region labels, and the ridge fit."""

import pytest
import repo_file
import torch


@pytest.fixture(scope="module")
def fit():
    return repo_file.load("scripts/fit_connector.py")


def test_each_visual_token_covers_one_square_block_of_patches(fit):
    from vlmkit.config import ConnectorConfig, VisionConfig
    from vlmkit.models.connectors import build_connector

    vcfg = VisionConfig(image_size=64, patch_size=8, hidden_size=24, num_layers=1, num_heads=2)  # 8x8 patches
    conn = build_connector(ConnectorConfig(kind="pixel_shuffle", in_dim=24, out_dim=32, scale_factor=2))
    regions = fit.token_regions(vcfg, conn)
    assert len(regions) == 16 and all(len(r) == 4 for r in regions)
    blocks = set()
    for patches in regions:
        x0, y0 = min(p[0] for p in patches), min(p[1] for p in patches)
        assert {(p[0], p[1]) for p in patches} == {(x0, y0), (x0 + 8, y0), (x0, y0 + 8), (x0 + 8, y0 + 8)}
        blocks.add((x0, y0))
    assert blocks == {(x, y) for x in range(0, 64, 16) for y in range(0, 64, 16)}  # the grid, each block once


def test_region_words_name_what_covers_the_region(fit):
    block = [(0, 0, 14, 14), (14, 0, 28, 14), (0, 14, 14, 28), (14, 14, 28, 28)]  # a 28x28 px token
    truth = {"generator": "shapes", "objects": [
        {"colour": "red", "shape": "circle", "box_px": [2, 2, 20, 20]},       # inside
        {"colour": "blue", "shape": "star", "box_px": [25, 25, 60, 60]},      # a corner only
        {"colour": "green", "shape": "square", "box_px": [0, 20, 28, 90]}]}   # 8 px of 70: 11% of it, 29% of the block
    assert fit.region_words(truth, block) == [("red", "circle")]
    assert fit.region_words({"generator": "text", "text": "hello", "box_px": [10, 10, 40, 20]}, block) == [("hello",)]
    assert fit.region_words({"generator": "charts"}, block) == []


def test_instance_targets_name_each_object_once(fit):
    """targets="instance": the cell holding an object's centre names it in full, the other cells it covers give its
    colour alone, so a scene of n shapes has exactly n shape words however many cells each spans."""
    cells = [[(x, y, x + 28, y + 28)] for y in range(0, 56, 28) for x in range(0, 56, 28)]  # 2x2 one-patch cells
    big = {"colour": "red", "shape": "circle", "box_px": [10, 10, 50, 50], "center": [30.0, 30.0]}  # spans all four
    small = {"colour": "blue", "shape": "star", "box_px": [2, 40, 12, 52], "center": [7.0, 46.0]}
    truth = {"generator": "shapes", "objects": [big, small]}
    assert [fit.region_words(truth, c) for c in cells] == [
        [("red", "circle")], [("red", "circle")], [("red", "circle"), ("blue", "star")], [("red", "circle")]]
    assert [fit.region_words(truth, c, "instance") for c in cells] == [
        [("red",)], [("red",)], [("red",), ("blue", "star")], [("red", "circle")]]  # the centre (30, 30): last cell
    with pytest.raises(ValueError, match="targets must be one of"):
        fit.region_words(truth, cells[0], "centre")


def test_two_tokens_per_cell_put_the_colour_then_the_shape(fit):
    vec = {w: torch.full((3,), float(i)) for i, w in enumerate(["red", "circle", "blue", "star", "blank", "hello"])}
    vec["red circle"], vec["blue star"] = torch.tensor([9.0, 9, 9]), torch.tensor([7.0, 7, 7])
    phrase_vec = vec.__getitem__
    a, b = [(0, 0, 10, 10)], [(10, 0, 20, 10)]  # two one-patch cells
    truth = {"generator": "shapes", "objects": [{"colour": "red", "shape": "circle", "box_px": [0, 0, 10, 10]},
                                                {"colour": "blue", "shape": "star", "box_px": [0, 0, 10, 10]}]}
    one = fit.region_targets(truth, [a, b], phrase_vec, 1)  # [2 cells, D]: phrase means, "blank" when empty
    assert one.tolist() == [[8.0] * 3, [4.0] * 3]
    two = fit.region_targets(truth, [a, b], phrase_vec, 2)  # [2 cells * 2, D]: colour, shape, colour, shape
    assert two.tolist() == [[1.0] * 3, [2.0] * 3, [4.0] * 3, [4.0] * 3]  # mean(red, blue), mean(circle, star), blank x2
    word = fit.region_targets({"generator": "text", "text": "hello", "box_px": [0, 0, 10, 10]}, [a], phrase_vec, 2)
    assert word.tolist() == [[5.0] * 3, [5.0] * 3]  # a rendered word fills both tokens
    with pytest.raises(ValueError, match="1 or 2 tokens per cell"):
        fit.region_targets(truth, [a], phrase_vec, 3)


def test_ridge_recovers_a_linear_map(fit):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 12, generator=g)
    w, b = torch.randn(5, 12, generator=g), torch.randn(5, generator=g)
    w_hat, b_hat = fit.ridge(x, x @ w.T + b, lam=1e-8)
    assert torch.allclose(w_hat, w, atol=1e-4) and torch.allclose(b_hat, b, atol=1e-4)
    w_small, _ = fit.ridge(x, x @ w.T + b, lam=10.0)
    assert w_small.norm() < 0.5 * w.norm()  # the penalty shrinks


def _tiny_vlm(src, scale_factor):
    from vlmkit.config import ConnectorConfig, LMConfig, VisionConfig, VLMConfig
    from vlmkit.models.lm import LanguageModel
    from vlmkit.models.vlm import VisionLanguageModel

    cfg = VLMConfig(vision=VisionConfig(image_size=32, patch_size=8, hidden_size=24, num_layers=1, num_heads=2),
                    connector=ConnectorConfig(kind="pixel_shuffle", scale_factor=scale_factor, pre_norm=True),
                    lm=LMConfig(source=src))
    return VisionLanguageModel(cfg, lm=LanguageModel.from_source(src))


def test_adapters_carry_over_to_a_refitted_connector_and_only_onto_their_tower(fit, tmp_path):
    from test_train_lora import _source_lm

    from vlmkit.config import LoRAConfig
    from vlmkit.models.vlm import VisionLanguageModel

    src = _source_lm(tmp_path / "lm")
    trained = _tiny_vlm(src, scale_factor=4)  # 16 patches -> 1 visual token
    trained.add_lora(LoRAConfig())
    with torch.no_grad():
        for n, p in trained.named_parameters():
            if ".lora_" in n:
                p.normal_(0, 0.05)
    trained.save_pretrained(tmp_path / "trained")

    refit = _tiny_vlm(src, scale_factor=2)  # 4 visual tokens, another projection shape
    refit.vision.load_state_dict(trained.vision.state_dict())
    fit.copy_adapters(refit, tmp_path / "trained")
    theirs = dict(trained.named_parameters())
    mine = {n: p for n, p in refit.named_parameters() if ".lora_" in n}
    assert len(mine) == 8 and all(torch.equal(p, theirs[n]) for n, p in mine.items())
    refit.save_pretrained(tmp_path / "refit")  # and it reloads strictly, with the adapters' config
    assert VisionLanguageModel.from_pretrained(tmp_path / "refit").cfg.lm.lora == LoRAConfig()

    other = _tiny_vlm(src, scale_factor=2)  # a fresh tower: the adapters never saw its tokens
    with pytest.raises(SystemExit, match="another tower"):
        fit.copy_adapters(other, tmp_path / "trained")


def test_mlp_fit_learns_a_nonlinear_map_and_takes_raw_inputs(fit):
    g = torch.Generator().manual_seed(0)
    scale, shift = torch.rand(12, generator=g) * 20 + 0.5, torch.randn(12, generator=g) * 30  # unstandardised inputs
    z = torch.randn(3000, 12, generator=g)
    x = z * scale + shift
    y = torch.cat([z[:, :4].abs(), torch.tanh(z[:, 4:8] * z[:, 8:])], dim=1)  # [N, 8]: not linear in x
    proj = torch.nn.Sequential(torch.nn.Linear(12, 64), torch.nn.GELU(), torch.nn.Linear(64, 8))
    fit.fit_mlp(x[:2500], y[:2500], proj, epochs=30, lr=3e-3, batch=100)
    with torch.no_grad():
        mlp_err = torch.nn.functional.mse_loss(proj(x[2500:]), y[2500:]).item()  # raw x: the scaling is folded in
    w, b = fit.ridge(x[:2500], y[:2500], 1e-3)
    lin_err = torch.nn.functional.mse_loss(x[2500:] @ w.T + b, y[2500:]).item()
    assert mlp_err < 0.5 * lin_err, (mlp_err, lin_err)
