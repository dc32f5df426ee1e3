"""Token merging on constructed features, where the number of merges is known in advance."""
import pytest
import torch

from vlmkit.processing.compress import CompressionReport, merge_spatial, merge_temporal


def _basis(k, d=8):
    return torch.eye(d)[k]


def test_spatial_merges_runs_of_similar_row_neighbours():
    # 3 x 4 grid; tokens named by direction: row 0 = a a a b, row 1 = c c d d, row 2 = e f e f
    a, b, c, d, e, f = (_basis(i) for i in range(6))
    x = torch.stack([a, a, a, b, c, c, d, d, e, f, e, f])
    r = merge_spatial(x, threshold=0.9, grid=(3, 4))
    # similar neighbour pairs: (a,a) x2, (c,c), (d,d) -> 4 saved; e f e f never merges
    assert r.saved == 4 and r.tokens.shape == (8, 8)
    assert r.sizes.tolist() == [3, 1, 2, 2, 1, 1, 1, 1]
    assert torch.allclose(r.tokens[0], a) and torch.allclose(r.tokens[3], d)


def test_spatial_never_merges_across_rows_and_averages():
    a = _basis(0)
    x = torch.stack([a, a, a + 0.1 * _basis(1), a])  # 2 x 2, all nearly parallel
    r = merge_spatial(x, threshold=0.9, grid=(2, 2))
    assert r.saved == 2 and r.sizes.tolist() == [2, 2]  # (0,1) and (2,3); not 1 -> 2
    assert torch.allclose(r.tokens[1], (x[2] + x[3]) / 2)


def test_threshold_is_strict_and_counts_edges():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(16, 8, generator=g)
    x = base.clone()
    x[5], x[6], x[7] = x[4] * 2, x[4] * 3, x[4]  # a run of 4 parallel tokens: 3 edges, within one row of 4
    r = merge_spatial(x, threshold=0.999, grid=(4, 4))
    expected_edges = sum(
        1 for i in range(15) if (i + 1) % 4 and torch.cosine_similarity(x[i], x[i + 1], dim=0) > 0.999
    )
    assert expected_edges == 3 and r.saved == 3
    assert merge_spatial(x, threshold=1.0, grid=(4, 4)).saved == 0  # cos is never > 1
    with pytest.raises(ValueError, match="does not hold"):
        merge_spatial(x, 0.9, grid=(3, 4))


def test_temporal_keeps_only_what_changed():
    # 3 frames of 4 tokens: positions 0 and 1 are static background, 2 and 3 change every frame
    g = torch.Generator().manual_seed(0)
    bg = torch.randn(2, 8, generator=g)
    frames = torch.stack([torch.cat([bg, torch.randn(2, 8, generator=g)]) for _ in range(3)])
    out = merge_temporal(frames, threshold=0.95)
    assert [o.tokens.shape[0] for o in out] == [4, 2, 2]
    assert sum(o.saved for o in out) == 4  # 2 positions x 2 repeated frames
    assert out[0].sizes.tolist() == [3, 3, 1, 1]
    assert torch.allclose(out[0].tokens[:2], bg, atol=1e-6)
    assert torch.allclose(out[2].tokens, frames[2, 2:])


def test_temporal_chain_breaks_and_restarts():
    a, b = _basis(0), _basis(1)
    frames = torch.stack([a, a, b, b, a]).unsqueeze(1)  # one position over 5 frames: runs a a | b b | a
    out = merge_temporal(frames, threshold=0.9)
    assert [o.tokens.shape[0] for o in out] == [1, 0, 1, 0, 1]
    assert sum(o.saved for o in out) == 2


def test_report():
    assert str(CompressionReport(100, 75)) == "100 -> 75 visual tokens (25 saved, 25.0%)"
