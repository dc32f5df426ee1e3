"""CLIP and SigLIP losses equal a direct per-pair implementation of each paper's formula."""
import math

import torch
import torch.nn.functional as F

from vlmkit.train.losses import clip_loss, siglip_loss


def _emb(n=5, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g), dim=-1), F.normalize(torch.randn(n, d, generator=g), dim=-1)


def clip_per_pair(x, y, t):
    """(1/2N) sum_i [-log softmax_j(t x_i.y_j)_i - log softmax_j(t x_j.y_i)_i], one dot product at a time."""
    n = x.shape[0]
    s = [[t * float(x[i] @ y[j]) for j in range(n)] for i in range(n)]
    total = 0.0
    for i in range(n):
        total += -(s[i][i] - math.log(sum(math.exp(s[i][j]) for j in range(n))))  # image i -> its text
        total += -(s[i][i] - math.log(sum(math.exp(s[j][i]) for j in range(n))))  # text i -> its image
    return total / (2 * n)


def siglip_per_pair(x, y, t, b):
    """-(1/N) sum_i sum_j log(1 / (1 + exp(z_ij (-t x_i.y_j - b)))), z_ij = 1 if i == j else -1."""
    n = x.shape[0]
    total = 0.0
    for i in range(n):
        for j in range(n):
            z = 1.0 if i == j else -1.0
            total += math.log(1.0 / (1.0 + math.exp(z * (-t * float(x[i] @ y[j]) - b))))
    return -total / n


def test_clip_matches_per_pair():
    x, y = _emb()
    for t in (1.0, 1 / 0.07, 30.0):
        assert abs(clip_loss(x, y, torch.tensor(t)).item() - clip_per_pair(x, y, t)) < 1e-5


def test_siglip_matches_per_pair():
    x, y = _emb(n=6, seed=1)
    for t, b in ((10.0, -10.0), (3.0, 0.5), (25.0, -4.0)):
        assert abs(siglip_loss(x, y, torch.tensor(t), torch.tensor(b)).item() - siglip_per_pair(x, y, t, b)) < 1e-4


def test_temperature_and_bias_are_learned_and_initialised_as_in_the_papers():
    from vlmkit.models.dual_encoder import DualEncoderConfig

    sig = DualEncoderConfig(loss="siglip")
    assert math.isclose(sig.init_logit_scale, math.log(10)) and sig.init_logit_bias == -10.0  # SigLIP: t'=log 10, b=-10
    assert math.isclose(DualEncoderConfig(loss="clip").init_logit_scale, math.log(1 / 0.07))  # CLIP: tau = 0.07
    x, y = _emb()
    logit_scale = torch.tensor(math.log(10.0), requires_grad=True)
    bias = torch.tensor(-10.0, requires_grad=True)
    siglip_loss(x, y, logit_scale.exp(), bias).backward()
    assert logit_scale.grad is not None and abs(logit_scale.grad.item()) > 0 and abs(bias.grad.item()) > 0
    # at b = -10 every pair looks negative: the loss pushes b up
    assert bias.grad.item() < 0


def test_duplicate_captions_are_positives():
    """With positives marking same-caption pairs, SigLIP labels them +1 and CLIP spreads its target over them."""
    import torch.nn.functional as F

    from vlmkit.train.losses import clip_loss, same_text_positives, siglip_loss

    torch.manual_seed(0)
    img = F.normalize(torch.randn(4, 8), dim=-1)
    txt = F.normalize(torch.randn(4, 8), dim=-1)
    txt[2] = txt[0]
    pos = same_text_positives(["a", "b", "a", "c"])
    assert pos.tolist() == [[True, False, True, False], [False, True, False, False], [True, False, True, False], [False, False, False, True]]
    scale, bias = torch.tensor(10.0), torch.tensor(-10.0)
    logits = scale * img @ txt.t() + bias
    want = sum(-F.logsigmoid((1.0 if pos[i, j] else -1.0) * logits[i, j]) for i in range(4) for j in range(4)) / 4
    assert torch.allclose(siglip_loss(img, txt, scale, bias, pos), want, atol=1e-6)
    lg = scale * img @ txt.t()
    row = -sum(torch.log_softmax(lg[i], 0)[pos[i]].mean() for i in range(4)) / 4
    col = -sum(torch.log_softmax(lg[:, j], 0)[pos[:, j]].mean() for j in range(4)) / 4
    assert torch.allclose(clip_loss(img, txt, scale, pos), (row + col) / 2, atol=1e-6)
    # the diagonal default is unchanged
    assert torch.allclose(siglip_loss(img, txt, scale, bias), siglip_loss(img, txt, scale, bias, torch.eye(4, dtype=torch.bool)))
