"""The generative rerank: P(yes) read from the VLM's next-token logits."""
import numpy as np
import pytest
import torch
from PIL import Image

from tiny import tiny_vlm
from vlmkit.search.search import RERANK_QUESTION, Result, rerank, yes_probability


@pytest.fixture(scope="module")
def vlm():
    return tiny_vlm()


def _img(path, seed):
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
    return str(path)


def test_yes_probability_matches_the_model_forward(vlm, tmp_path):
    path = _img(tmp_path / "a.png", 0)
    q = RERANK_QUESTION.format(query="a red car")
    p = yes_probability(vlm, path, q)
    # the same number through VisionLanguageModel.forward on unpadded ids
    prompt = vlm.prompt([{"role": "user", "content": [{"type": "image", "image": path}, {"type": "text", "text": q}]}])
    with torch.no_grad():
        logits = vlm.model(torch.tensor([prompt.input_ids]), pixel_values=vlm.image_processor(prompt.images)).logits[0, -1]
    probs = torch.softmax(logits.float(), -1)
    tok = vlm.tokenizer
    yes = sorted({tok.encode(w, add_special_tokens=False)[0] for w in ("yes", "Yes", " yes", " Yes")})
    no = sorted({tok.encode(w, add_special_tokens=False)[0] for w in ("no", "No", " no", " No")})
    want = probs[yes].sum() / (probs[yes].sum() + probs[no].sum())
    assert 0.0 < p < 1.0
    assert p == pytest.approx(float(want), rel=1e-4)


def test_rerank_orders_the_top_by_p_yes_and_keeps_the_tail(vlm, tmp_path):
    paths = [_img(tmp_path / f"{i}.png", i) for i in range(4)]
    results = [Result(i + 1, p, 1.0 - 0.1 * i) for i, p in enumerate(paths)]
    p_yes = {p: yes_probability(vlm, p, RERANK_QUESTION.format(query="a dog")) for p in paths[:3]}
    out = rerank(vlm, "a dog", results, top=3)
    assert [r.path for r in out[:3]] == sorted(paths[:3], key=lambda p: -p_yes[p])
    assert out[3].path == paths[3] and out[3].rerank_score is None
    assert [r.rank for r in out] == [1, 2, 3, 4]
