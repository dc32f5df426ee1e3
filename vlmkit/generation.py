"""Decoding over inputs_embeds with a KV cache: greedy, temperature, top-p, stop strings, streaming.

The prompt (text and visual tokens) is prefilled once; each decode step feeds
only the new token and reuses the cache. Batches are left-padded so every row's
last prompt token sits in the last column; position ids come from the
attention mask so padding shifts nothing.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

# on_text(row, text_delta): called as text becomes final (never with a partial stop string)
TextCallback = Callable[[int, str], None]
# logits_processor(row, generated_ids, logits[V]) -> logits[V]: constrained decoding hooks in here
LogitsProcessor = Callable[[int, list, torch.Tensor], torch.Tensor]
# inserter(row, generated_ids, text, hidden[D]) -> token ids to write next instead of sampling, or None. It is asked
# before each token with the LM's final hidden state at the last token, and, if it has a read_prompt method, handed
# the prefill's final states [B, T, D] once; a box head hooks in here (models/box_head.py BoxWriter).
Inserter = Callable[[int, list, str, torch.Tensor], "list[int] | None"]


@dataclass
class GenerationConfig:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    use_cache: bool = True

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if isinstance(self.stop, str):
            self.stop = (self.stop,)
        self.stop = tuple(s for s in self.stop if s)


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str = "length"  # "stop" (EOS or a stop string) or "length"


class _TextStream:
    """Incremental detokenisation for one row, holding back anything that could start a stop string."""

    def __init__(self, tokenizer, stop: tuple[str, ...], row: int, on_text: TextCallback | None):
        self.tok, self.stop, self.row, self.on_text = tokenizer, stop, row, on_text
        self.ids: list[int] = []
        self.text = ""
        self.emitted = 0
        self.done = False
        self.finish_reason = "length"

    def push(self, token_id: int, is_eos: bool) -> None:
        if is_eos:
            self._finish("stop")
            return
        self.ids.append(token_id)
        self.text = self.tok.decode(self.ids, skip_special_tokens=True)
        for s in self.stop:
            k = self.text.find(s)
            if k >= 0:
                self.text = self.text[:k]
                self._finish("stop")
                return
        self._emit(len(self.text) - self._holdback())

    def _holdback(self) -> int:
        if self.text.endswith("\ufffd"):  # a multi-byte character is still incomplete
            return 1
        for n in range(min(len(self.text), max((len(s) for s in self.stop), default=0)), 0, -1):
            if any(s.startswith(self.text[-n:]) for s in self.stop):
                return n
        return 0

    def _emit(self, upto: int) -> None:
        if upto > self.emitted:
            if self.on_text:
                self.on_text(self.row, self.text[self.emitted:upto])
            self.emitted = upto

    def _finish(self, reason: str) -> None:
        self._emit(len(self.text))
        self.done, self.finish_reason = True, reason


def sample(logits: torch.Tensor, cfg: GenerationConfig, gen: torch.Generator | None) -> torch.Tensor:
    """logits [B, V] -> next tokens [B]."""
    if cfg.temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / cfg.temperature, dim=-1)
    if cfg.top_p < 1:
        sorted_p, idx = probs.sort(dim=-1, descending=True)
        # keep the smallest prefix whose mass reaches top_p (the top token always survives)
        drop = sorted_p.cumsum(-1) - sorted_p >= cfg.top_p
        sorted_p = sorted_p.masked_fill(drop, 0)
        probs = torch.zeros_like(probs).scatter(-1, idx, sorted_p)
    return torch.multinomial(probs, 1, generator=gen).squeeze(-1)


@torch.no_grad()
def generate_from_embeds(
    lm,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    tokenizer,
    cfg: GenerationConfig,
    eos_token_ids: set[int],
    on_text: TextCallback | None = None,
    logits_processor: LogitsProcessor | None = None,
    position_ids: torch.Tensor | None = None,
    inserter: Inserter | None = None,
) -> list[GenerationResult]:
    """inputs_embeds [B, T, D] (left-padded), attention_mask [B, T] -> one result per row.
    position_ids: the prompt's, [B, T] or [3, B, T] (VisionLanguageModel.position_ids); by default counted
    from the mask."""
    lm.keep_hidden = inserter is not None  # the LM keeps its final states only for an inserter to read
    try:
        return _generate(lm, inputs_embeds, attention_mask, tokenizer, cfg, eos_token_ids, on_text, logits_processor,
                         position_ids, inserter)
    finally:
        lm.keep_hidden, lm.hidden = False, None


def _generate(lm, inputs_embeds, attention_mask, tokenizer, cfg, eos_token_ids, on_text, logits_processor,
              position_ids, inserter) -> list[GenerationResult]:
    from transformers import DynamicCache

    B = inputs_embeds.shape[0]
    gen = torch.Generator().manual_seed(cfg.seed) if cfg.seed is not None else None
    streams = [_TextStream(tokenizer, cfg.stop, i, on_text) for i in range(B)]
    mask = attention_mask.long()
    positions = (mask.cumsum(-1) - 1).clamp(min=0) if position_ids is None else position_ids  # [(3,) B, T]
    embeds = inputs_embeds
    cache = DynamicCache(config=lm.model.config) if cfg.use_cache else None
    out = lm(embeds, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=cfg.use_cache, logits_to_keep=1)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(eos_token_ids), 0)
    if inserter is not None and hasattr(inserter, "read_prompt"):
        inserter.read_prompt(lm.hidden)

    queued: list[list[int]] = [[] for _ in range(B)]  # tokens an inserter wrote, fed one per step like sampled ones
    for step in range(cfg.max_new_tokens):
        logits = out.logits[:, -1].float()  # [B, V]
        if inserter is not None:
            for i, s in enumerate(streams):
                if not s.done and not queued[i]:
                    queued[i] = list(inserter(i, s.ids, s.text, lm.hidden[i, -1]) or [])
        if logits_processor is not None:
            logits = torch.stack([logits_processor(i, streams[i].ids, logits[i]) for i in range(B)])
        nxt = sample(logits, cfg, gen)  # [B]
        for i, q in enumerate(queued):
            if q:
                nxt[i] = q.pop(0)
        for i, s in enumerate(streams):
            if not s.done:
                s.push(int(nxt[i]), int(nxt[i]) in eos_token_ids)
            else:
                nxt[i] = pad_id
        if all(s.done for s in streams) or step == cfg.max_new_tokens - 1:
            break
        new_embed = lm.embed_tokens(nxt[:, None])  # [B, 1, D]
        mask = torch.cat([mask, mask.new_ones(B, 1)], dim=1)
        new_pos = positions[..., -1:] + 1  # the prompt ends in text, whose axes agree
        positions = torch.cat([positions, new_pos], dim=-1)
        if cfg.use_cache:
            out = lm(new_embed, attention_mask=mask, position_ids=new_pos, past_key_values=cache, use_cache=True)
        else:  # the reference path: recompute the whole sequence every step
            embeds = torch.cat([embeds, new_embed], dim=1)
            out = lm(embeds, attention_mask=mask, position_ids=positions, logits_to_keep=1)

    for s in streams:
        if not s.done:
            s._finish("length")
    return [GenerationResult(s.text, list(s.ids), s.finish_reason) for s in streams]


def eos_ids(tokenizer, model_config=None) -> set[int]:
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gc_eos = getattr(getattr(model_config, "generation_config", None), "eos_token_id", None) if model_config else None
    for v in ([gc_eos] if isinstance(gc_eos, int) else gc_eos or []):
        ids.add(int(v))
    return ids
