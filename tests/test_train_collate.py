"""The collator supervises assistant replies only, token by token, and the loss is a mean over answer tokens."""
import torch
from tiny import smollm2_tokenizer

from vlmkit.processing.chat import build_prompt, render, tokenize_with_images
from vlmkit.train.collate import IGNORE, ConversationEncoder, collate_lm, encode_messages, to_messages
from vlmkit.train.losses import lm_loss_sum

IMG = -200


def _conversation():
    return [
        {"role": "user", "content": "<image>\nWhat colour is the square?"},
        {"role": "assistant", "content": "Red."},
        {"role": "user", "content": "And the circle?"},
        {"role": "assistant", "content": "Blue, mostly."},
    ]


def test_mask_token_by_token():
    tok = smollm2_tokenizer()
    msgs = _conversation()
    ids, labels = encode_messages(tok, msgs, "<image>", IMG, tokens_per_image=4)

    # the ids are exactly the inference tokenisation of the rendered conversation
    full = render(tok, msgs, add_generation_prompt=False)
    assert ids == tokenize_with_images(tok, full, "<image>", IMG, [4])

    # expected mask, built independently: walk the ids and mark each reply + its <|im_end|>
    im_start, im_end = tok.convert_tokens_to_ids("<|im_start|>"), tok.convert_tokens_to_ids("<|im_end|>")
    assistant_header = tok("assistant\n", add_special_tokens=False)["input_ids"]
    expected = [IGNORE] * len(ids)
    i = 0
    while i < len(ids):
        if ids[i] == im_start and ids[i + 1:i + 1 + len(assistant_header)] == assistant_header:
            j = i + 1 + len(assistant_header)
            while ids[j] != im_end:
                expected[j] = ids[j]
                j += 1
            expected[j] = im_end  # the end-of-turn marker is supervised: the model must learn to stop
            i = j
        i += 1
    assert labels == expected

    supervised = [t for t, l in zip(ids, labels) if l != IGNORE]
    assert tok.decode(supervised) == "Red.<|im_end|>Blue, mostly.<|im_end|>"
    # nothing of the system prompt, user turns, role headers or image positions is supervised
    for t, l in zip(ids, labels):
        if t == IMG:
            assert l == IGNORE
    assert sum(l != IGNORE for l in labels) == len(tok("Red.", add_special_tokens=False)["input_ids"]) + len(
        tok("Blue, mostly.", add_special_tokens=False)["input_ids"]) + 2
    # the prompt part matches what inference feeds the model before the first reply
    prompt = build_prompt(tok, msgs[:1], "<image>", IMG, 4, images=["x.png"])
    assert ids[:len(prompt.input_ids)] == prompt.input_ids
    assert all(l == IGNORE for l in labels[:len(prompt.input_ids)])


def test_llava_record_and_image_placeholder():
    row = {"image": "a.png", "conversations": [{"from": "human", "value": "Colour?"}, {"from": "gpt", "value": "red"}]}
    msgs = to_messages(row, "<image>", 1, "")
    assert msgs[0] == {"role": "user", "content": "<image>\nColour?"}  # LLaVA's convention: image first
    cap = to_messages({"image": "a.png", "text": "a red square"}, "<image>", 1, "Describe.")
    assert cap[1] == {"role": "assistant", "content": "a red square"}


def test_collate_pads_with_ignore_and_counts_answer_tokens(tmp_path):
    from PIL import Image

    from vlmkit.processing.images import ImageProcessor

    tok = smollm2_tokenizer()
    Image.new("RGB", (16, 16), (255, 0, 0)).save(tmp_path / "r.png")
    enc = ConversationEncoder(tok, ImageProcessor(32, (0.5,) * 3, (0.5,) * 3), "<image>", IMG, 4, max_length=512)
    a = enc({"image": "r.png", "conversations": [{"from": "human", "value": "<image>\nHi"}, {"from": "gpt", "value": "red"}]}, tmp_path)
    b = enc({"image": "r.png", "conversations": [{"from": "human", "value": "<image>\nA much longer question here?"},
                                                {"from": "gpt", "value": "a longer answer, with words"}]}, tmp_path)
    batch = collate_lm([a, b, {"skip": "missing_image"}], pad_id=2)
    assert batch["skipped"] == {"missing_image": 1}
    assert batch["pixel_values"].shape == (2, 3, 32, 32)
    la, lb = len(a["input_ids"]), len(b["input_ids"])
    assert batch["input_ids"].shape == (2, max(la, lb))
    short = 0 if la < lb else 1
    n_short = min(la, lb)
    assert (batch["labels"][short, n_short:] == IGNORE).all() and (batch["attention_mask"][short, n_short:] == 0).all()
    n_sup = sum(l != IGNORE for l in a["labels"]) + sum(l != IGNORE for l in b["labels"])
    assert batch["n_tokens"] == n_sup


def _two_answers(seed: int, spans) -> tuple[torch.Tensor, torch.Tensor]:
    """Two random 12-token rows; row i is supervised on spans[i] = (start, stop), the rest IGNORE."""
    torch.manual_seed(seed)
    ids = torch.randint(3, 1000, (2, 12))
    labels = torch.full_like(ids, IGNORE)
    for row, (a, b) in enumerate(spans):
        labels[row, a:b] = ids[row, a:b]
    return ids, labels


def test_loss_is_mean_over_answer_tokens():
    from tiny import tiny_vlm

    vlm = tiny_vlm()
    ids, labels = _two_answers(seed=0, spans=((8, 11), (5, 7)))
    out = vlm.model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels)
    n = int((labels[:, 1:] != IGNORE).sum())
    assert n == 5
    ours = lm_loss_sum(out.logits, labels) / n
    assert torch.allclose(ours, out.loss, atol=1e-5)  # VisionLanguageModel.forward: mean over labels != -100
    per_token = torch.nn.functional.cross_entropy(out.logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(),
                                                  ignore_index=IGNORE, reduction="none")
    assert torch.allclose(ours, per_token.sum() / 5, atol=1e-5)
    assert not torch.allclose(ours, per_token.sum() / per_token.numel())  # not a mean over the sequence


def test_loss_at_supervised_positions_equals_full_loss():
    """Training projects only the supervised positions onto the vocabulary; the sum must not change."""
    from tiny import tiny_vlm
    from vlmkit.train.losses import lm_loss_sum_at, supervised_positions

    vlm = tiny_vlm()
    ids, labels = _two_answers(seed=1, spans=((8, 11), (3, 5)))
    keep = supervised_positions(labels)
    assert keep.tolist() == [2, 3, 7, 8, 9]  # position t predicts token t+1
    full = vlm.model(input_ids=ids, attention_mask=torch.ones_like(ids))
    kept = vlm.model(input_ids=ids, attention_mask=torch.ones_like(ids), logits_to_keep=keep)
    assert kept.logits.shape[1] == 5
    want = lm_loss_sum(full.logits, labels)
    assert torch.allclose(lm_loss_sum_at(kept.logits, labels, keep), want, atol=1e-4)
    assert want > 0


def test_length_grouped_batches_cover_the_epoch_and_cut_padding():
    import random

    from vlmkit.train.data import EpochBatchSampler, record_length

    rng = random.Random(0)
    lengths = [rng.choice([40, 60, 400, 420]) + rng.randint(0, 9) for _ in range(1000)]
    plain = EpochBatchSampler(1000, 16, seed=3)
    grouped = EpochBatchSampler(1000, 16, seed=3, lengths=lengths)
    for s in (plain, grouped):
        flat = [i for b in s for i in b]
        assert sorted(flat) == list(range(1000))  # every sample once per epoch
    padded = lambda s: sum(len(b) * max(lengths[i] for i in b) for b in s.batches())
    assert padded(grouped) < 0.7 * padded(plain)  # padding to the longest row is mostly gone
    assert grouped.batches() == EpochBatchSampler(1000, 16, seed=3, lengths=lengths).batches()  # deterministic
    grouped.set_position(0, 10)
    assert list(grouped) == grouped.batches()[10:]  # a resumed run sees the batches it would have
    grouped.set_position(1, 0)
    assert grouped.batches() != EpochBatchSampler(1000, 16, seed=3, lengths=lengths).batches()  # a new epoch reshuffles
    assert record_length({"conversations": [{"from": "human", "value": "abc"}, {"from": "gpt", "value": "de"}]}) == 5
    assert record_length({"image": "x.png", "text": "a red square"}) == 12


def test_a_given_prefix_is_read_but_not_trained():
    tok = smollm2_tokenizer()
    given = "the square <box>1,2,3,4</box> and the circle <box>5,6,7,8</box> so the square is"
    row = {"conversations": [{"from": "human", "value": "<image>\nIs the square left of the circle?"},
                             {"from": "gpt", "value": " left of the circle: yes", "given": given}]}
    msgs = to_messages(row, "<image>", 1, "")
    assert msgs[1]["content"] == given + " left of the circle: yes"
    ids, labels = encode_messages(tok, msgs, "<image>", IMG, tokens_per_image=4)
    # the input is the whole reply, as if the model had written it
    assert ids == tokenize_with_images(tok, render(tok, msgs, add_generation_prompt=False), "<image>", IMG, [4])
    trained = tok.decode([t for t in labels if t != IGNORE])
    assert trained == " left of the circle: yes<|im_end|>"
    # the same turn without "given" trains the whole reply
    plain = [msgs[0], {"role": "assistant", "content": msgs[1]["content"]}]
    assert tok.decode([t for t in encode_messages(tok, plain, "<image>", IMG, 4)[1] if t != IGNORE]).startswith(given)


def test_a_bad_given_prefix_skips_the_row():
    import pytest

    from vlmkit.train.collate import SkipSample
    for turn in ({"from": "human", "value": "Hi", "given": "x"}, {"from": "gpt", "value": "a", "given": 3},
                 {"from": "gpt", "value": "a", "given": ""}, {"from": "gpt", "value": "  ", "given": "all"}):
        row = {"conversations": [{"from": "human", "value": "<image>\nQ?"}, turn]}
        with pytest.raises(SkipSample, match="given"):
            to_messages(row, "<image>", 1, "")
