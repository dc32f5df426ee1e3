"""Zero-shot Fashion-MNIST accuracy of a dual encoder, with and without the prompt ensemble.

    .venv/bin/python bench/zeroshot/run.py --model weights/vlmkit-clip --n 2000
Uses the held-out Fashion-MNIST *test* split (never seen in training; the recipe trains on
the train split and selects nothing on test).
"""
import argparse
import json
import time
from pathlib import Path

from vlmkit.data import make_source
from vlmkit.models.dual_encoder import DualEncoder
from vlmkit.search.classify import DEFAULT_TEMPLATES, SINGLE_TEMPLATE, zero_shot_accuracy

CLASSES = ["t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]

ap = argparse.ArgumentParser()
ap.add_argument("--model", default="weights/vlmkit-clip")
ap.add_argument("--n", type=int, default=2000)
args = ap.parse_args()
enc = DualEncoder.from_pretrained(args.model).eval()
src = make_source("fashion-mnist", "test", seed=0, n=args.n)
samples = [src[i] for i in range(len(src))]
images = [s.image for s in samples]
labels = [s.label for s in samples]
classnames = sorted(set(labels), key=labels.index)
t = time.perf_counter()
single = zero_shot_accuracy(enc, images, labels, classnames, SINGLE_TEMPLATE)
ensemble = zero_shot_accuracy(enc, images, labels, classnames, DEFAULT_TEMPLATES)
out = {"model": args.model, "n": len(images), "classes": len(classnames), "single_template": single,
       "ensemble": ensemble, "n_templates": len(DEFAULT_TEMPLATES), "seconds": time.perf_counter() - t}
print(json.dumps(out, indent=1))
Path(__file__).with_name("results.json").write_text(json.dumps(out, indent=1) + "\n")
