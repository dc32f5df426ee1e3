"""Box head: the coordinates after a `<box>` the LM writes, decoded from the tower's patches.

The LM's hidden state at the trigger is the query, as LISA reads its [SEG] token (Lai et al., 2024) and
VisionLLM v2 its routing tokens (Wu et al., 2024). The box itself is decoded densely, as FCOS does (Tian et al.,
2019): every patch scores how central it is to the object the query means and regresses its distances to the
four edges; the most central patch's box is the answer. A patch is read as the tower's feature beside the LM's
final state at the visual token that covers it: the tower is precise about where, the LM's states know what
(which shape a blob is, which of two triangles is the small one).

Why not let the LM write the digits: vlmkit-smol reads its 64 visual tokens in raster order, so a token's row is
its place in the sequence while its column is only in its content, and the boxes it writes land in the right row
and a random column (EXPERIMENTS.md, sessions 13 to 17). Here a patch's position is its index in the grid, known
exactly, and the LM only has to say which object.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import BoxHeadConfig
from ..data.boxes import format_box, format_point


class BoxHead(nn.Module):
    def __init__(self, cfg: BoxHeadConfig):
        super().__init__()
        if not (cfg.query_dim and cfg.vision_dim and cfg.grid):
            raise ValueError("BoxHeadConfig has no sizes: build it inside a VLMConfig, which derives them")
        self.cfg = cfg
        d, n = cfg.width, cfg.grid * cfg.grid
        self.query = nn.Sequential(nn.LayerNorm(cfg.query_dim), nn.Linear(cfg.query_dim, d))
        self.words = nn.Sequential(nn.LayerNorm(cfg.query_dim), nn.Linear(cfg.query_dim, d))
        # the query reads the question's words before it meets the patches
        self.reader = nn.TransformerEncoderLayer(d, cfg.num_heads, 2 * d, dropout=0.0, batch_first=True, norm_first=True)
        self.patches = nn.Sequential(nn.LayerNorm(cfg.vision_dim + cfg.query_dim), nn.Linear(cfg.vision_dim + cfg.query_dim, d))
        self.position = nn.Parameter(torch.randn(n, d) * 0.02)
        self.mixer = nn.ModuleList(nn.TransformerEncoderLayer(d, cfg.num_heads, 2 * d, dropout=0.0, batch_first=True,
                                                              norm_first=True) for _ in range(cfg.patch_layers))
        self.out = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.GELU(), nn.Linear(d, 5))
        ys, xs = torch.meshgrid(torch.arange(cfg.grid), torch.arange(cfg.grid), indexing="ij")
        centres = torch.stack([(xs.flatten() + 0.5) / cfg.grid, (ys.flatten() + 0.5) / cfg.grid], -1)  # [N, 2] (x, y)
        self.register_buffer("centres", centres, persistent=False)

    def forward(self, query: torch.Tensor, words: torch.Tensor, words_mask: torch.Tensor, patches: torch.Tensor,
                states: torch.Tensor):
        """query [B, D_lm] (the LM's last hidden state at the trigger), words [B, K, D_lm] (token embeddings ending
        at the trigger) with words_mask [B, K] (True where real), patches [B, N, D_vision] (the tower's features),
        states [B, M, D_lm] (the LM's final states at the image's M visual tokens, raster order)
        -> (centrality logits [B, N], boxes [B, N, 4] as x1, y1, x2, y2 in 0..1)."""
        g, t = self.cfg.grid, self.cfg.token_grid
        up = states.unflatten(1, (t, t)).repeat_interleave(g // t, 1).repeat_interleave(g // t, 2).flatten(1, 2)  # [B, N, D_lm]
        patches = torch.cat([patches, up.to(patches.dtype)], -1)  # [B, N, D_vision + D_lm]
        x = torch.cat([self.query(query)[:, None], self.words(words)], 1)  # [B, 1 + K, d]
        keep = torch.cat([words_mask.new_ones(len(words_mask), 1), words_mask.bool()], 1)
        q = self.reader(x, src_key_padding_mask=~keep)[:, 0]  # [B, d]
        # each patch gated by the query: large where the patch shows what the query asks for
        z = self.patches(patches) * q[:, None] + self.position  # [B, N, d]
        for layer in self.mixer:
            z = layer(z)
        o = self.out(z)  # [B, N, 5]
        # distances to the left, top, right and bottom edges; a quarter of the image at softplus(0) ~ 0.17
        dist = F.softplus(o[..., 1:]) * 0.25
        boxes = torch.cat([self.centres - dist[..., :2], self.centres + dist[..., 2:]], -1)
        return o[..., 0], boxes

    @torch.no_grad()
    def predict(self, query, words, words_mask, patches, states) -> torch.Tensor:
        """-> [B, 4] boxes, x1, y1, x2, y2 clipped to 0..1: the most central patch's."""
        scores, boxes = self(query, words, words_mask, patches, states)
        best = boxes[torch.arange(len(boxes)), scores.argmax(-1)]
        return best.clamp(0, 1)


def box_text(box: torch.Tensor) -> str:
    """[4] in 0..1 -> "x1,y1,x2,y2</box>", the grounding format's integers in 0..1000."""
    return format_box([round(float(v) * 1000) for v in box]).removeprefix("<box>")


def point_text(box: torch.Tensor) -> str:
    """[4] in 0..1 -> "x,y</point>": the box's centre as its tenth of the image on each axis."""
    return format_point([round(float(v) * 1000) for v in box]).removeprefix("<point>")


def context_window(ids: list[int], k: int) -> tuple[list[int], list[bool]]:
    """The k token ids ending at the trigger (left-padded with 0) and which are words: image placeholders
    (negative or out-of-vocabulary ids) and padding are not."""
    window = ids[-k:] if k else []
    pad = k - len(window)
    return [0] * pad + [max(t, 0) for t in window], [False] * pad + [t >= 0 for t in window]


class BoxWriter:
    """generate_from_embeds' inserter: once a row's text ends with the trigger, the head's box as tokens; once it
    ends with the point trigger, the box's centre as a point.

    prompt_ids: each row's prompt (unpadded); images: each row's one whole image, or None where the prompt does not
    hold exactly one (the LM then writes the digits itself); patches_of(image) -> the tower's features [N, D_vision],
    run only for a row that writes the trigger, since most answers are not boxes. read_prompt takes the LM's final
    states over the left-padded prompt batch, from which each row keeps those at its visual tokens."""

    def __init__(self, head: BoxHead, tokenizer, embed_tokens, prompt_ids: list[list[int]], images: list,
                 patches_of, image_token_id: int):
        self.head, self.tok, self.embed = head, tokenizer, embed_tokens
        self.prompt_ids, self.images, self.patches_of = prompt_ids, images, patches_of
        self.image_token_id = image_token_id
        self.states: list[torch.Tensor | None] = [None] * len(prompt_ids)
        self.patches: dict[int, torch.Tensor] = {}  # a row's tower features, once it writes its first box
        self.vocab = len(tokenizer)

    def read_prompt(self, hidden: torch.Tensor) -> None:
        """hidden [B, T, D_lm]: the prefill's final states; row i's prompt fills its last len(prompt_ids[i]) columns."""
        T = hidden.shape[1]
        for i, ids in enumerate(self.prompt_ids):
            if self.images[i] is not None:
                where = [T - len(ids) + p for p, t in enumerate(ids) if t == self.image_token_id]
                self.states[i] = hidden[i, where]  # [M, D_lm]

    def __call__(self, row: int, ids: list[int], text: str, hidden: torch.Tensor) -> list[int] | None:
        if self.states[row] is None:
            return None
        if text.endswith(self.head.cfg.trigger):
            write = box_text
        elif text.endswith(self.head.cfg.point_trigger):
            write = point_text
        else:
            return None
        ctx, real = context_window([t if t < self.vocab else -1 for t in self.prompt_ids[row] + ids],
                                   self.head.cfg.context_tokens)
        words = self.embed(torch.tensor([ctx]))  # [1, K, D_lm]
        if row not in self.patches:  # a grounded relation writes two boxes about one image
            self.patches[row] = self.patches_of(self.images[row])  # [N, D_vision]
        patches = self.patches[row]
        box = self.head.predict(hidden[None].to(words.dtype), words, torch.tensor([real]),
                                patches[None].to(words.dtype), self.states[row][None].to(words.dtype))[0]
        return self.tok(write(box), add_special_tokens=False).input_ids
