"""Queries against an ImageIndex: a text or an image, embedded by the index's own model; optional VLM rerank.

The rerank asks the generative model a yes/no question per hit and reads
P(yes) from the next-token logits (one prefill per image, no decoding), so
its cost is one forward pass per reranked image.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import VlmkitError
from .index import Hit, ImageIndex

RERANK_QUESTION = 'Does this image match the description "{query}"? Answer yes or no.'


@dataclass
class Result:
    rank: int
    path: str
    score: float  # cosine similarity from the dual encoder
    rerank_score: float | None = None  # P(yes) from the VLM

    def to_dict(self) -> dict:
        d = {"rank": self.rank, "path": self.path, "score": round(self.score, 6)}
        if self.rerank_score is not None:
            d["rerank_score"] = round(self.rerank_score, 6)
        return d


def load_encoder_for(index: ImageIndex, model: str | os.PathLike | None = None):
    """The encoder that built `index`: --model if given, else the path the index recorded, else the default."""
    from ..models.dual_encoder import is_dual_encoder_dir, load_dual_encoder

    if model is None:
        recorded = index.get_meta("model_path")
        if recorded and is_dual_encoder_dir(recorded):
            model = recorded
    encoder = load_dual_encoder(model)
    check_model(index, encoder)
    return encoder


def check_model(index: ImageIndex, encoder) -> None:
    if index.model_id and index.model_id != encoder.model_id:
        raise VlmkitError(
            f"{index.root} was built with model {index.model_id}, but the query model is {encoder.model_id}: "
            "their vectors cannot be compared (pass the --model the index was built with)"
        )


def embed_query(encoder, text: str | None = None, image=None) -> np.ndarray:
    """One query -> [1, D] unit vector, from a text or an image (path, bytes or PIL)."""
    import torch

    if (text is None) == (image is None):
        raise VlmkitError("give either a text query or --image, not both")
    with torch.no_grad():
        if text is not None:
            if not text.strip():
                raise VlmkitError("the text query is empty")
            q = encoder.encode_text([text])
        else:
            q = encoder.encode_images([image])
    return q.float().cpu().numpy()


def search(index: ImageIndex, encoder, text: str | None = None, image=None, k: int = 10) -> list[Result]:
    check_model(index, encoder)
    if k < 1:
        raise VlmkitError(f"-k must be at least 1, got {k}")
    hits: list[Hit] = index.search(embed_query(encoder, text, image), k)[0]
    return [Result(i + 1, h.path, h.score) for i, h in enumerate(hits)]


def yes_probability(vlm, image, question: str) -> float:
    """P(yes) / (P(yes) + P(no)) for the VLM's next token after the question."""
    import torch

    tok = vlm.tokenizer
    yes = {t for w in ("yes", "Yes", " yes", " Yes") for t in tok.encode(w, add_special_tokens=False)[:1]}
    no = {t for w in ("no", "No", " no", " No") for t in tok.encode(w, add_special_tokens=False)[:1]}
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": question}]}]
    with torch.no_grad():
        embeds, mask, position_ids = vlm._embed_batch([vlm.prompt(messages)])
        logits = vlm.model.lm(embeds, attention_mask=mask, position_ids=position_ids).logits[0, -1].float()  # [V]
    lp = torch.log_softmax(logits, -1)
    p_yes, p_no = lp[sorted(yes)].exp().sum(), lp[sorted(no)].exp().sum()
    return float(p_yes / (p_yes + p_no).clamp(min=1e-12))


def rerank(vlm, query: str, results: list[Result], top: int | None = None, question: str = RERANK_QUESTION) -> list[Result]:
    """Reorder the first `top` results by the VLM's P(yes); the rest keep their order after them."""
    top = len(results) if top is None else min(top, len(results))
    head, tail = results[:top], results[top:]
    for r in head:
        r.rerank_score = yes_probability(vlm, r.path, question.format(query=query))
    head.sort(key=lambda r: (-r.rerank_score, -r.score))
    out = head + tail
    for i, r in enumerate(out):
        r.rank = i + 1
    return out


def format_table(results: list[Result]) -> str:
    if not results:
        return "no results"
    rr = any(r.rerank_score is not None for r in results)
    head = f"{'rank':>4}  {'score':>7}" + ("  rerank" if rr else "") + "  path"
    lines = [head]
    for r in results:
        extra = f"  {r.rerank_score:6.3f}" if rr and r.rerank_score is not None else ("        " if rr else "")
        lines.append(f"{r.rank:>4}  {r.score:7.4f}{extra}  {_short(r.path)}")
    return "\n".join(lines)


def _short(path: str) -> str:
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return path
