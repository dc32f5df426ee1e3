"""A vlmkit model as an lmms-eval model backend (lmms-eval's "simple" model interface).

lmms-eval (EvolvingLMMs-Lab/lmms-eval) is not a dependency: with it installed the
class subclasses `lmms_eval.api.model.lmms`; without it, a stand-in with the same
surface, so the adapter imports and can be tested offline. To run lmms-eval tasks:

    LMMS_EVAL_PLUGINS=vlmkit.eval.lmms_plugin \\
        python -m lmms_eval --model vlmkit --model_args pretrained=weights/vlmkit-smol --tasks mme

Request shapes (Instance.args), as lmms-eval's ConfigurableTask builds them:
    generate_until              (context, gen_kwargs, doc_to_visual, doc_id, task, split)
    loglikelihood               (context, doc_to_target, doc_to_visual, doc_id, task, split)
    generate_until_multi_round  (context, gen_kwargs, doc_to_visual, doc_to_text, doc_id, task, split)
where the document is self.task_dict[task][split][doc_id], which lmms-eval's
evaluator fills in. Images go before the text unless the context holds one "<image>"
placeholder per image, in which case they are put in place.

loglikelihood returns (sum of the continuation tokens' log-probabilities, whether
greedy decoding would produce exactly those tokens), as the base class documents;
some lmms-eval backends return the mean loss instead.
Multi-round follows lmms-eval's protocol: round 0 answers the context; before each
later round doc_to_text(doc, previous_output=..., round_idx=..., previous_round_info=...)
returns (visuals, context, terminal, round_results, round_info) and a true `terminal`
ends the dialogue; the result per request is the tuple of round results.
"""
from __future__ import annotations

import abc
import json
import logging
from typing import Any

import torch

from ..generation import GenerationConfig

log = logging.getLogger(__name__)
IMAGE_PLACEHOLDER = "<image>"
MAX_ROUNDS = 32  # a task whose doc_to_text never signals the end stops here


class _NoCache:
    def add_partial(self, attr, req, res) -> None:
        pass


class _LMMSStandIn(abc.ABC):
    """The part of lmms_eval.api.model.lmms that a backend relies on, for use without lmms-eval."""

    is_simple: bool = True

    def __init__(self) -> None:
        self._rank, self._world_size = 0, 1
        self.cache_hook = _NoCache()
        self.task_dict: dict = {}

    @abc.abstractmethod
    def loglikelihood(self, requests) -> list[tuple[float, bool]]: ...

    @abc.abstractmethod
    def generate_until(self, requests) -> list[str]: ...

    @abc.abstractmethod
    def generate_until_multi_round(self, requests) -> list: ...

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
        args = dict(kv.split("=", 1) for kv in arg_string.split(",") if kv.strip())
        return cls(**args, **{k: v for k, v in (additional_config or {}).items() if v is not None})

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def world_size(self) -> int:
        return self._world_size

    def set_cache_hook(self, cache_hook) -> None:
        self.cache_hook = cache_hook


try:
    from lmms_eval.api.model import lmms as _Base
except ImportError:
    _Base = _LMMSStandIn


def _flatten(visuals) -> list:
    if visuals is None:
        return []
    if not isinstance(visuals, (list, tuple)):
        return [visuals]
    return [v for item in visuals for v in _flatten(item)]


class VlmkitLMMS(_Base):
    """lmms-eval backend over vlmkit.api.VLM: batched greedy generation, log-likelihoods, multi-round dialogue."""

    def __init__(self, pretrained: str | None = None, batch_size: int | str = 1, max_new_tokens: int | str = 256,
                 model=None, **kwargs) -> None:
        self.pretrained = str(pretrained) if pretrained is not None else None
        super().__init__()
        ignored = {k: v for k, v in kwargs.items() if k not in ("device", "device_map", "dtype")}
        if ignored:
            log.warning("vlmkit backend ignores model_args %s", sorted(ignored))
        if model is None:
            from ..api import VLM

            model = VLM.load(pretrained)
        self._vlm = model
        self.batch_size_per_gpu = int(batch_size)
        self.default_max_new_tokens = int(max_new_tokens)
        self._warned_beams = False

    # ---- lmms-eval properties ----
    @property
    def model(self):
        return self._vlm.model

    @property
    def tokenizer(self):
        return self._vlm.tokenizer

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    @property
    def device(self):
        return next(self._vlm.model.parameters()).device

    @property
    def eot_token_id(self):
        return self._vlm.tokenizer.eos_token_id

    # ---- helpers ----
    def _doc(self, task, split, doc_id):
        return self.task_dict[task][split][doc_id]

    def _visuals(self, doc_to_visual, task, split, doc_id) -> list:
        if doc_to_visual is None:
            return []
        return _flatten(doc_to_visual(self._doc(task, split, doc_id)))

    @staticmethod
    def messages(context: str, visuals: list) -> list[dict]:
        """One user turn: images in place of exactly matching <image> placeholders, else images first."""
        pieces = context.split(IMAGE_PLACEHOLDER)
        parts: list[dict] = []
        if visuals and len(pieces) - 1 == len(visuals):
            for i, text in enumerate(pieces):
                if text.strip():
                    parts.append({"type": "text", "text": text.strip()})
                if i < len(visuals):
                    parts.append({"type": "image", "image": visuals[i]})
        else:
            parts = [{"type": "image", "image": v} for v in visuals]
            parts.append({"type": "text", "text": "".join(pieces).strip()})
        return [{"role": "user", "content": parts}]

    def generation_config(self, gen_kwargs: dict | None) -> GenerationConfig:
        kw = dict(gen_kwargs or {})
        until = kw.get("until") or ()
        until = (until,) if isinstance(until, str) else tuple(until)
        if int(kw.get("num_beams", 1) or 1) > 1 and not self._warned_beams:
            log.warning("vlmkit backend decodes without beam search; num_beams is ignored")
            self._warned_beams = True
        sample = bool(kw.get("do_sample", False)) and float(kw.get("temperature") or 0) > 0
        return GenerationConfig(max_new_tokens=int(kw.get("max_new_tokens") or self.default_max_new_tokens),
                                temperature=float(kw["temperature"]) if sample else 0.0,
                                top_p=float(kw.get("top_p") or 1.0) if sample else 1.0, stop=until)

    def _generate(self, conversations: list, cfg: GenerationConfig) -> list[str]:
        return [r.text.strip() for r in self._vlm.generate(conversations, config=cfg)]

    # ---- the interface ----
    def generate_until(self, requests) -> list[str]:
        from tqdm.auto import tqdm

        args = [r.args for r in requests]
        groups: dict[str, list[int]] = {}  # one generation config per batch
        for i, a in enumerate(args):
            groups.setdefault(json.dumps(a[1], sort_keys=True, default=str), []).append(i)
        results: list[Any] = [None] * len(args)
        with tqdm(total=len(args), disable=self.rank != 0, desc="vlmkit responding") as bar:
            for idxs in groups.values():
                cfg = self.generation_config(args[idxs[0]][1])
                for start in range(0, len(idxs), self.batch_size):
                    chunk = idxs[start:start + self.batch_size]
                    convs = [self.messages(args[i][0], self._visuals(args[i][2], args[i][4], args[i][5], args[i][3])) for i in chunk]
                    for i, text in zip(chunk, self._generate(convs, cfg)):
                        results[i] = text
                        self.cache_hook.add_partial("generate_until", (args[i][0], args[i][1]), text)
                    bar.update(len(chunk))
        return results

    @torch.no_grad()
    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        from tqdm.auto import tqdm

        vlm = self._vlm
        out = []
        for req in tqdm(requests, disable=self.rank != 0, desc="vlmkit log-likelihoods"):
            context, doc_to_target, doc_to_visual, doc_id, task, split = req.args
            continuation = doc_to_target if isinstance(doc_to_target, str) else doc_to_target(self._doc(task, split, doc_id))
            prompt = vlm.prompt(self.messages(context, self._visuals(doc_to_visual, task, split, doc_id)))
            cont = vlm.tokenizer(continuation, add_special_tokens=False)["input_ids"]
            if not cont:
                out.append((0.0, True))
                continue
            ids = torch.tensor([prompt.input_ids + cont])  # [1, T]
            pixels = vlm.image_processor(prompt.images) if prompt.images else None
            logits = vlm.model(input_ids=ids, pixel_values=pixels).logits[0]  # [T, V]
            n = len(prompt.input_ids)
            logp = torch.log_softmax(logits[n - 1:n - 1 + len(cont)].float(), dim=-1)  # [len(cont), V]
            target = torch.tensor(cont)
            ll = float(logp.gather(-1, target[:, None]).sum())
            greedy = bool((logp.argmax(-1) == target).all())
            out.append((ll, greedy))
            self.cache_hook.add_partial("loglikelihood", (context, continuation), (ll, greedy))
        return out

    def generate_until_multi_round(self, requests) -> list[tuple]:
        from tqdm.auto import tqdm

        results = []
        for req in tqdm(requests, disable=self.rank != 0, desc="vlmkit multi-round"):
            context, gen_kwargs, doc_to_visual, doc_to_text, doc_id, task, split = req.args
            doc = self._doc(task, split, doc_id)
            cfg = self.generation_config(gen_kwargs)
            visuals = self._visuals(doc_to_visual, task, split, doc_id)
            rounds: list[str] = []
            info = None
            for round_idx in range(MAX_ROUNDS):
                if round_idx:
                    visuals, context, terminal, round_res, info = doc_to_text(
                        doc, previous_output=list(rounds), round_idx=round_idx, previous_round_info=info)
                    rounds = list(round_res)
                    if terminal:
                        break
                    visuals = _flatten(visuals)
                rounds.append(self._generate([self.messages(context, visuals)], cfg)[0])
            else:
                log.warning("doc %s of %s stopped after %d rounds without a terminal signal", doc_id, task, MAX_ROUNDS)
            results.append(tuple(rounds))
        return results
