"""Zero-shot classification: template ensembles, abstention, calibration, and the CLI."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vlmkit.cli import main
from vlmkit.config import VisionConfig
from vlmkit.errors import VlmkitError
from vlmkit.models.dual_encoder import DualEncoder, DualEncoderConfig, TextTowerConfig
from vlmkit.search.calibrate import calibrate
from vlmkit.search.classify import (
    DEFAULT_TEMPLATES,
    REVIEW,
    SINGLE_TEMPLATE,
    Thresholds,
    class_embeddings,
    classify,
    decide,
    parse_labels,
    zero_shot_accuracy,
    zero_shot_probs,
)

CLASSES = ["cat", "dog", "car", "tree"]


class ToyEncoder:
    """Class c is the axis e_c. Template t describes class c as e_c + 1.5 e_(c + shift_t): a biased prompt.

    shift_t = (t + 1) % 4, so the plain "a photo of a {}." (t = 0) points at the *next* class and gets
    every image wrong, while the 12-template ensemble holds each shift three times, and the bias cancels.
    """

    def __init__(self, templates=DEFAULT_TEMPLATES):
        self.table = {}
        for t, tmpl in enumerate(templates):
            for c, name in enumerate(CLASSES):
                v = torch.zeros(4)
                v[c] += 1.0
                v[(c + (t + 1) % 4) % 4] += 1.5
                self.table[tmpl.format(name)] = v

    def encode_text(self, texts):
        return F.normalize(torch.stack([self.table[t] for t in texts]), dim=-1)

    def encode_image(self, x):
        return F.normalize(x, dim=-1)

    def scale(self):
        return torch.tensor(100.0)


def toy_images(n_per_class=5, noise=0.05):
    g = torch.Generator().manual_seed(0)
    x = torch.eye(4).repeat_interleave(n_per_class, 0) + noise * torch.randn(4 * n_per_class, 4, generator=g)
    return x, [c for c in range(4) for _ in range(n_per_class)]


def test_ensemble_fixes_a_biased_prompt_exactly():
    x, y = toy_images()
    enc = ToyEncoder()
    assert zero_shot_accuracy(enc, x, y, CLASSES, DEFAULT_TEMPLATES) == 1.0
    assert zero_shot_accuracy(enc, x, y, CLASSES, SINGLE_TEMPLATE) == 0.0
    # labels may be names too
    assert zero_shot_accuracy(enc, x, [CLASSES[i] for i in y], CLASSES) == 1.0
    # the class embedding is the renormalised template mean
    emb = class_embeddings(enc, CLASSES, DEFAULT_TEMPLATES)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(4))
    assert emb.argmax(1).tolist() == [0, 1, 2, 3]


def test_probabilities_use_the_model_scale():
    x, _ = toy_images(1, noise=0.0)
    enc = ToyEncoder()
    p = zero_shot_probs(enc, x, CLASSES)
    cls = class_embeddings(enc, CLASSES)
    want = torch.softmax(100.0 * F.normalize(x, dim=-1) @ cls.t(), -1).numpy()
    np.testing.assert_allclose(p, want, rtol=1e-5)
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-6)


def test_abstention_by_score_and_margin():
    probs = np.array([[0.9, 0.05, 0.05], [0.5, 0.45, 0.05], [0.4, 0.3, 0.3]])
    preds = decide(probs, ["a", "b", "c"], Thresholds(min_score=0.45, min_margin=0.1))
    assert [p.label for p in preds] == ["a", REVIEW, REVIEW]
    assert [p.best for p in preds] == ["a", "a", "a"]
    assert preds[1].margin == pytest.approx(0.05) and preds[2].score == pytest.approx(0.4)
    assert [p.label for p in decide(probs, ["a", "b", "c"])] == ["a", "a", "a"]  # no thresholds, no abstention


def test_calibration_picks_the_widest_thresholds_that_reach_the_target():
    rng = np.random.default_rng(0)
    n_ok, n_bad = 60, 40
    score = np.concatenate([rng.uniform(0.7, 1.0, n_ok), rng.uniform(0.35, 0.65, n_bad)])
    probs = np.stack([score, (1 - score) / 2, (1 - score) / 2], 1)  # the prediction is always class 0
    labels = np.array([0] * n_ok + [1] * n_bad)
    cal = calibrate(probs, labels, target_precision=1.0)
    assert cal.reached and cal.precision == 1.0 and cal.coverage == pytest.approx(0.6)
    assert 0.65 < cal.min_score <= 0.7 or 1.5 * 0.65 - 0.5 < cal.min_margin <= 1.5 * 0.7 - 0.5
    assert cal.accuracy_no_abstention == pytest.approx(0.6)
    easy = calibrate(probs, labels, target_precision=0.5)
    assert easy.coverage == 1.0 and easy.min_score == 0.0 and easy.min_margin == 0.0
    hopeless = calibrate(probs, np.ones(100, dtype=int), target_precision=0.9)
    assert not hopeless.reached and hopeless.precision == 0.0


def test_label_and_template_parsing(tmp_path):
    assert parse_labels(" cat, dog ,car,") == ["cat", "dog", "car"]
    f = tmp_path / "labels.txt"
    f.write_text("# classes\ncat\n\ndog\n")
    assert parse_labels(labels_file=str(f)) == ["cat", "dog"]
    with pytest.raises(VlmkitError, match="duplicate"):
        parse_labels("cat,dog,cat")
    with pytest.raises(VlmkitError, match="exactly one"):
        class_embeddings(ToyEncoder(), CLASSES, ["no placeholder"])
    with pytest.raises(VlmkitError, match="at least two"):
        classify(ToyEncoder(), torch.eye(4), ["cat"])


def tiny_dual(seed=0):
    torch.manual_seed(seed)
    vc = VisionConfig(image_size=32, patch_size=8, hidden_size=32, num_layers=2, num_heads=2)
    return DualEncoder(DualEncoderConfig(vision=vc, text=TextTowerConfig(kind="hash"), embed_dim=16, name="tiny")).eval()


def test_zero_shot_accuracy_matches_a_manual_computation_on_a_real_model():
    m = tiny_dual()
    x = torch.randn(12, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    y = [i % 3 for i in range(12)]
    names = ["red square", "blue circle", "green triangle"]
    with torch.no_grad():
        cls = F.normalize(torch.stack([F.normalize(m.encode_text([t.format(c) for t in DEFAULT_TEMPLATES]), dim=-1).mean(0) for c in names]), dim=-1)
        pred = (m.encode_image(x) @ cls.t()).argmax(1)
    want = (pred == torch.tensor(y)).float().mean().item()
    assert zero_shot_accuracy(m, x, y, names) == pytest.approx(want)


def test_cli_classify_and_calibrate(tmp_path, capsys):
    model = tmp_path / "model"
    tiny_dual().save_pretrained(model)
    rng = np.random.default_rng(0)
    val = tmp_path / "val"
    for c, base in (("red_square", (200, 30, 30)), ("blue_circle", (30, 30, 200))):
        (val / c).mkdir(parents=True)
        for i in range(6):
            arr = np.clip(np.array(base) + rng.normal(0, 20, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(val / c / f"{i}.png")
    (val / "red_square" / "broken.png").write_bytes(b"junk")
    out = tmp_path / "th.json"
    assert main(["classify-calibrate", str(val), "--model", str(model), "--target-precision", "0.8", "--out", str(out),
                 "--plot", str(tmp_path / "cal.png"), "--no-ensemble"]) == 0
    err = capsys.readouterr().err
    assert "broken.png" in err
    th = json.loads(out.read_text())
    assert th["labels"] == ["blue circle", "red square"] and th["templates"] == list(SINGLE_TEMPLATE)
    assert th["extra"]["n"] == 12 and 0.0 <= th["min_score"] <= 1.0
    assert (tmp_path / "cal.png").stat().st_size > 1000

    img = str(val / "red_square" / "0.png")
    # labels and templates come from the thresholds file
    assert main(["classify", img, "--model", str(model), "--thresholds", str(out), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res[0]["image"] == img and res[0]["best"] in th["labels"]
    # an impossible min score sends everything to review
    assert main(["classify", img, "--model", str(model), "--labels", "cat,dog", "--min-score", "1.01", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["label"] == REVIEW
    # bad input: one line, exit 2
    assert main(["classify", img, "--model", str(model), "--thresholds", str(out), "--labels", "cat,dog"]) == 2
    assert "calibrated for labels" in capsys.readouterr().err
    assert main(["classify", img, "--model", str(model)]) == 2
    assert "--labels" in capsys.readouterr().err
    # an unreadable image is reported, the rest classified, exit 1
    assert main(["classify", img, str(val / "red_square" / "broken.png"), "--model", str(model), "--labels", "cat,dog"]) == 1
    cap = capsys.readouterr()
    assert "broken.png" in cap.err and img in cap.out
