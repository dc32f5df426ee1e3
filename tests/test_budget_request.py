"""The request-level token budget planner and `vlmkit budget`."""
import pytest
from PIL import Image

from vlmkit.cli import main
from vlmkit.errors import BudgetError
from vlmkit.processing.budget import plan_request, preset_configs
from vlmkit.processing.tiling import TilingConfig, grid_pinpoints

CLIP_L, LLAMA3 = preset_configs("clip-vit-l-14-336", "llama3-8b")[:2], preset_configs("clip-vit-l-14-336", "llama3-8b")[2]
ANYRES16 = TilingConfig(policy="anyres", pinpoints=grid_pinpoints(336, 16, 4))


def _plan(sizes, tiling, **kw):
    return plan_request(sizes, tiling, *CLIP_L, LLAMA3, **kw)


def test_per_image_and_total_tokens_and_kv_bytes():
    p = _plan([(1344, 672), (336, 336), (100, 1000)], ANYRES16, text_tokens=40, max_new_tokens=100, context=16384)
    assert [c.visual_tokens for c in p.images] == [5184, 2 * 576, 4 * 576]  # 2x4+1, 1x1+1, 3x1+1
    assert p.visual_tokens == 5184 + 1152 + 2304
    assert p.total_tokens == p.visual_tokens + 40 + 100
    # llama3-8b: 32 layers x 8 kv heads x 128 dims x K and V x 2 bytes = 131,072 bytes per token
    assert p.kv_bytes_per_token == 131072 and p.kv_bytes == p.total_tokens * 131072
    assert p.fits and p.context == 16384


def test_split_counts_its_layout_tags():
    p = _plan([(1344, 672)], TilingConfig(policy="split"))
    c = p.images[0]
    assert (c.grid.rows, c.grid.cols) == (2, 4) and c.visual_tokens == 9 * 576
    # per tile: wrapper + <row_i_col_j>; a newline per row and one more; the global image: wrapper, tag, wrapper
    assert c.marker_tokens == 8 * 2 + 2 + 1 + 3
    assert p.total_tokens == 9 * 576 + 22


def test_over_budget_is_a_clear_error():
    with pytest.raises(BudgetError, match=r"needs 10,368 tokens .* context is 8,192"):
        _plan([(1344, 672)] * 2, ANYRES16)


def test_degrade_gives_up_tiles_first_then_resizes():
    p = _plan([(1344, 672)] * 2, ANYRES16, on_over="degrade")
    assert p.fits and p.degraded == "at most 7 tiles"  # gives 2x3 + global = 7 x 576, x 2 images = 8,064
    assert p.visual_tokens == 2 * 7 * 576
    p = _plan([(1344, 672)] * 10, ANYRES16, on_over="degrade")
    assert p.degraded == "plain resize" and p.visual_tokens == 10 * 576
    with pytest.raises(BudgetError, match="even after degrading"):
        _plan([(1344, 672)] * 20, ANYRES16, on_over="degrade")


def test_native_policy_prices_patches():
    vision, connector, lm = preset_configs("vlmkit-vit", "smollm2-135m")
    tiling = TilingConfig.for_tower(vision, policy="native", max_patches=256)
    p = plan_request([(1600, 400)], tiling, vision, connector, lm)
    g = p.images[0].grid
    assert g.rows * g.cols <= 256 and p.visual_tokens == g.rows * g.cols  # CLS dropped, mlp keeps the count


def test_cli_budget(capsys, tmp_path):
    path = tmp_path / "photo.png"
    Image.new("RGB", (1000, 100)).save(path)
    assert main(["budget", "1344x672", str(path), "--policy", "anyres", "--grid", "16", "--lm", "llama3-8b",
                 "--text-tokens", "40", "--max-new-tokens", "256"]) == 0
    out = capsys.readouterr().out
    assert "2x4 tiles + global of 336 px" in out and "5,184" in out
    assert "1x3 tiles + global of 336 px" in out and "7,488" in out  # 5,184 + 4 x 576
    assert "fits                        yes" in out
    assert main(["budget", "1344x672", "1344x672", "--policy", "anyres", "--grid", "16", "--lm", "vicuna-7b"]) == 2
    assert "context is 4,096" in capsys.readouterr().err
    assert main(["budget", str(tmp_path / "missing.png")]) == 2
    assert "no such file" in capsys.readouterr().err
