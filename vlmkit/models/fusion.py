"""Flamingo fusion (Alayrac et al. 2022; code layout after OpenFlamingo): gated cross-attention
dense blocks between the decoder layers of an unchanged HF causal LM.

How it fits the rest of vlmkit
  * The sequence holds ONE position per image: the `<image>` placeholder (cfg.image_token_id,
    cfg.image_seq_len == 1). Its embedding is a learned vector, `image_marker` (Flamingo adds
    an `<image>` token to the vocabulary and trains its embedding; this is that embedding,
    kept outside the LM so the LM's weights and vocabulary stay untouched).
  * The connector (a Perceiver resampler in Flamingo; any connector works) turns each image
    into K visual tokens [K, D_lm]. They never enter the token sequence or the LM's KV cache.
  * `embed_inputs` returns the text embeddings and binds the batch's visual context. Every
    later call of the LM (training forward, prefill, each cached decode step) reads it, until
    the next `embed_inputs` call replaces it. So generation.generate_from_embeds and the LM's
    own call signature stay exactly as they are. The binding is model state: one batch at a
    time per model (run concurrent requests as one batch, as a batching server does).
  * A text token at column t of row b attends to the images of row b whose marker sits at a
    column <= t (all earlier images, or only the latest with fusion.last_image_only, as in
    the paper). Tokens before the first image get no cross-attention at all. The gated
    feed-forward applies to every token, as in Flamingo.
  * The blocks run in forward pre-hooks on the chosen decoder layers, rather than by
    replacing those layers, so the LM's parameter names (and a LoRA adapter's) are unchanged
    and its weights still load from the LM source; the blocks save under `fusion.*`.
  * tanh gates start at 0: at initialisation the output is exactly the text-only LM's on the
    same input embeddings (x + 0 * f(x) == x in floating point).

The decode column of each new token comes from the KV cache (`past_key_values.get_seq_length`
of that layer before it runs), so no step counter can drift out of sync. Under no_grad the
cross-attention keys/values of the visual tokens are computed once per bound context and
reused by every decode step (the fusion mode's share of the KV cache: see `context_bytes`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..config import FusionConfig, VLMConfig
from .connectors import CrossAttention, feed_forward

_NEVER = 2**62  # marker column of a padded image slot: no text column ever reaches it


@dataclass
class VisualContext:
    """The visual side of one batch, as the gated blocks read it."""

    visual: torch.Tensor  # [B, M, K, D_lm] each row's images in order, zero-padded to M images
    marker_cols: torch.Tensor  # [B, M] column of each image's marker (_NEVER for padding)
    kv: dict = field(default_factory=dict)  # block id -> (k, v), memoised when grad is off


class GatedCrossAttentionBlock(nn.Module):
    """GATED XATTN-DENSE (Flamingo fig. 4): x += tanh(a) * xattn(x, visual); x += tanh(b) * ffw(x)."""

    def __init__(self, dim: int, num_heads: int, ff_mult: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.norm_media = nn.LayerNorm(dim)
        self.attn = CrossAttention(dim, num_heads, bias=False)
        self.attn_gate = nn.Parameter(torch.zeros(1))
        self.ff = feed_forward(dim, dim * ff_mult, bias=False)
        self.ff_gate = nn.Parameter(torch.zeros(1))

    def visual_kv(self, visual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, M, K, D = visual.shape
        return self.attn.project_kv(self.norm_media(visual.reshape(B, M * K, D)))  # each [B, H, M*K, D_head]

    def forward(self, x: torch.Tensor, kv=None, visible: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, T, D]; kv from visual_kv; visible [B, T, M*K] bool (True = this token may attend)."""
        if kv is not None:
            has_image = visible.any(-1, keepdim=True)  # [B, T, 1]
            # a row with nothing visible would softmax over nothing (NaN): let it attend anywhere, then zero it
            mask = (visible | ~has_image).unsqueeze(1)  # [B, 1, T, M*K]
            attn = self.attn(self.norm(x), attn_mask=mask, kv=kv) * has_image
            x = x + self.attn_gate.tanh() * attn
        return x + self.ff_gate.tanh() * self.ff(x)


class FlamingoFusion(nn.Module):
    """The gated blocks, the `<image>` marker embedding, and the hooks that run them inside the LM."""

    def __init__(self, cfg: FusionConfig, dim: int, num_layers: int):
        super().__init__()
        self.cfg = cfg
        self.layer_ids = [i for i in range(num_layers) if (i + 1) % cfg.every == 0]
        if not self.layer_ids:
            raise ValueError(f"fusion.every={cfg.every} exceeds the LM's {num_layers} decoder layers: no block would be inserted")
        heads = cfg.num_heads or max(1, dim // 64)
        if dim % heads:
            raise ValueError(f"fusion.num_heads {heads} does not divide the LM width {dim}")
        self.blocks = nn.ModuleDict({str(i): GatedCrossAttentionBlock(dim, heads, cfg.ff_mult) for i in self.layer_ids})
        self.image_marker = nn.Parameter(torch.zeros(dim))  # [D_lm]
        self._ctx: VisualContext | None = None

    # ---- wiring ----
    def attach(self, lm) -> None:
        """Hook the blocks in front of the LM's decoder layers; start the marker at the mean token embedding."""
        layers = decoder_layers(lm.model)
        if len(layers) <= self.layer_ids[-1]:
            raise ValueError(f"the LM has {len(layers)} decoder layers; fusion needs {self.layer_ids[-1] + 1}")
        for i in self.layer_ids:
            if getattr(layers[i], "_vlmkit_fused", False):
                raise ValueError("this LM already carries fusion blocks: build each fused model on its own LM instance")
            layers[i].register_forward_pre_hook(_BlockHook(self, i), with_kwargs=True)
            layers[i]._vlmkit_fused = True
        with torch.no_grad():  # as transformers' resize_token_embeddings starts new tokens
            self.image_marker.copy_(lm.model.get_input_embeddings().weight.mean(0))

    # ---- inputs ----
    def embed_inputs(self, lm, input_ids: torch.Tensor, image_token_id: int, image_features: torch.Tensor | None) -> torch.Tensor:
        """input_ids [B, T] with one image_token_id per image; image_features [N_images, K, D_lm] in row-major
        marker order. Returns the embeddings [B, T, D_lm] and binds the visual context for the LM calls that follow."""
        is_image = input_ids == image_token_id
        embeds = lm.embed_tokens(input_ids.masked_fill(is_image, 0))  # [B, T, D_lm]
        n_markers = int(is_image.sum())
        n_images = 0 if image_features is None else image_features.shape[0]
        if n_markers != n_images:
            raise ValueError(f"prompt has {n_markers} image markers but {n_images} image(s) were given (fusion: one marker per image)")
        self.bind(is_image, image_features)
        return torch.where(is_image.unsqueeze(-1), self.image_marker.to(embeds.dtype), embeds)

    def bind(self, is_image: torch.Tensor, image_features: torch.Tensor | None) -> None:
        """is_image [B, T] marks marker columns; None features (or no markers) binds a text-only batch."""
        if image_features is None or not bool(is_image.any()):
            self._ctx = None
            return
        B = is_image.shape[0]
        _, K, D = image_features.shape
        M = int(is_image.sum(1).max())
        rows, cols = is_image.nonzero(as_tuple=True)  # row-major: the order features are given in
        slot = (is_image.long().cumsum(1) - 1)[rows, cols]  # each image's index within its row
        visual = image_features.new_zeros(B, M, K, D)
        visual[rows, slot] = image_features
        marker_cols = torch.full((B, M), _NEVER, dtype=torch.long, device=is_image.device)
        marker_cols[rows, slot] = cols
        self._ctx = VisualContext(visual, marker_cols)

    def unbind(self) -> None:
        self._ctx = None

    def context_bytes(self) -> int:
        """Bytes held for cross-attention keys/values of the bound context (memoised under no_grad)."""
        if self._ctx is None:
            return 0
        return sum(t.numel() * t.element_size() for kv in self._ctx.kv.values() for t in kv)

    # ---- the hook body ----
    def run_block(self, layer_idx: int, hidden: torch.Tensor, past_key_values) -> torch.Tensor:
        block = self.blocks[str(layer_idx)]
        ctx = self._ctx
        if ctx is None:
            return block(hidden)
        B, T, _ = hidden.shape
        _, M, K, _ = ctx.visual.shape
        offset = past_key_values.get_seq_length(layer_idx) if past_key_values is not None else 0
        cols = torch.arange(offset, offset + T, device=hidden.device)  # [T] columns of these tokens
        visible = visible_images(ctx.marker_cols, cols, self.cfg.last_image_only)  # [B, T, M]
        visible = visible.unsqueeze(-1).expand(B, T, M, K).reshape(B, T, M * K)
        kv = ctx.kv.get(layer_idx)
        if kv is None:
            kv = block.visual_kv(ctx.visual)
            if not torch.is_grad_enabled():  # decode steps reuse them, as the LM reuses its KV cache
                ctx.kv[layer_idx] = kv
        return block(hidden, kv, visible)


def visible_images(marker_cols: torch.Tensor, cols: torch.Tensor, last_only: bool = False) -> torch.Tensor:
    """marker_cols [B, M] (in column order per row), cols [T] -> [B, T, M]: may the token at column t see image m?"""
    visible = marker_cols[:, None, :] <= cols[None, :, None]
    if last_only:
        latest = visible.sum(-1, keepdim=True) - 1
        visible = visible & (torch.arange(marker_cols.shape[1], device=cols.device) == latest)
    return visible


class _BlockHook:
    """A forward pre-hook object (not a closure, so deepcopy of the model rewires it to the copy)."""

    def __init__(self, fusion: FlamingoFusion, layer_idx: int):
        self.fusion, self.layer_idx = fusion, layer_idx

    def __call__(self, module, args, kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))  # the layers' argument is `cache` from transformers 5.24
        if args:
            return (self.fusion.run_block(self.layer_idx, args[0], cache), *args[1:]), kwargs
        kwargs["hidden_states"] = self.fusion.run_block(self.layer_idx, kwargs["hidden_states"], cache)
        return args, kwargs


def decoder_layers(hf_model: nn.Module) -> nn.ModuleList:
    """The decoder layer list of a transformers causal LM (Llama, Qwen2, Mistral, Gemma, ... keep it at .model.layers)."""
    decoder = hf_model.get_decoder() if hasattr(hf_model, "get_decoder") else getattr(hf_model, "model", None)
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(f"cannot find the decoder layers of {type(hf_model).__name__} for fusion")
    return layers


def build_fusion(cfg: VLMConfig, lm=None) -> FlamingoFusion | None:
    """The fusion module for cfg.fusion (None for kind "none"), hooked into `lm` when given."""
    if cfg.fusion.kind == "none":
        return None
    fusion = FlamingoFusion(cfg.fusion, cfg.lm.hidden_size, cfg.lm.num_layers)
    if lm is not None:
        fusion.attach(lm)
    return fusion
