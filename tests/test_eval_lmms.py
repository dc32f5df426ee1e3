"""The lmms-eval adapter's interface on a tiny model, with Instance-like requests and no network."""
import importlib
from dataclasses import dataclass

import pytest
import torch
from PIL import Image

from fixtures.eval.tiny_vlm import save_tiny_vlm
from vlmkit.eval.lmms_adapter import VlmkitLMMS, _LMMSStandIn
from vlmkit.generation import GenerationConfig


@dataclass
class _Req:  # what the adapter reads from lmms_eval.api.instance.Instance
    args: tuple


def Req(args: tuple):
    """lmms-eval's own Instance when it is installed, else a stand-in with the same .args."""
    try:
        from lmms_eval.api.instance import Instance
    except ImportError:
        return _Req(args)
    kind = "generate_until_multi_round" if len(args) == 7 else "generate_until"
    return Instance(request_type=kind, arguments=args, idx=0, metadata={"task": "toy", "doc_id": args[-3], "repeats": 1})


DOCS = [{"image": Image.new("RGB", (32, 32), c), "question": q}
        for c, q in [((220, 30, 30), "what is the color?"), ((30, 30, 220), "what is the shape?"), ((0, 0, 0), "is there a circle?")]]


@pytest.fixture(scope="module")
def vlm(tmp_path_factory):
    import vlmkit

    return vlmkit.load(save_tiny_vlm(tmp_path_factory.mktemp("m") / "tiny"))


@pytest.fixture
def adapter(vlm):
    a = VlmkitLMMS(model=vlm, batch_size=1, max_new_tokens=5)
    a.task_dict = {"toy": {"test": DOCS}}
    return a


def to_visual(doc):
    return [doc["image"]]


def _direct(vlm, doc, max_new_tokens=5, stop=()):
    conv = [{"role": "user", "content": [{"type": "image", "image": doc["image"]}, {"type": "text", "text": doc["question"]}]}]
    return vlm.generate([conv], config=GenerationConfig(max_new_tokens=max_new_tokens, stop=stop))[0].text.strip()


def test_interface_and_plugin_registration(adapter):
    try:
        from lmms_eval.api.model import lmms
    except ImportError:
        lmms = _LMMSStandIn
    assert isinstance(adapter, lmms)
    assert adapter.rank == 0 and adapter.world_size == 1 and adapter.batch_size == 1
    from vlmkit.eval.lmms_plugin import CLASS_PATH  # what the entry-point manifest names

    module, cls = CLASS_PATH.rsplit(".", 1)
    assert getattr(importlib.import_module(module), cls) is VlmkitLMMS
    models = importlib.import_module("vlmkit.eval.lmms_plugin.models").AVAILABLE_MODELS  # the legacy plugin route
    for name, cls in models.items():
        assert getattr(importlib.import_module(f"vlmkit.eval.lmms_plugin.models.{name}"), cls) is VlmkitLMMS


def test_generate_until_matches_the_model(adapter, vlm):
    gen = {"max_new_tokens": 5, "do_sample": False, "temperature": 0}
    reqs = [Req((d["question"], dict(gen), to_visual, i, "toy", "test")) for i, d in enumerate(DOCS)]
    got = adapter.generate_until(reqs)
    assert got == [_direct(vlm, d) for d in DOCS]
    assert reqs[0].args[1] == gen  # the task's kwargs are not mutated
    # `until` cuts the text where the stop string starts
    words = got[0].split()
    assert len(words) >= 3
    cut = adapter.generate_until([Req((DOCS[0]["question"], {**gen, "until": [" " + words[2]]}, to_visual, 0, "toy", "test"))])
    assert cut == [" ".join(words[:2])]


def test_image_placeholders(adapter):
    img = DOCS[0]["image"]
    m = adapter.messages("<image>\nFirst. <image> Second?", [img, img])[0]["content"]
    assert [p["type"] for p in m] == ["image", "text", "image", "text"] and m[1]["text"] == "First."
    m = adapter.messages("No placeholder here", [img])[0]["content"]
    assert [p["type"] for p in m] == ["image", "text"]
    m = adapter.messages("<image> mismatched <image>", [img])[0]["content"]  # counts differ: images first, placeholders dropped
    assert [p["type"] for p in m] == ["image", "text"] and "<image>" not in m[1]["text"]
    assert adapter.messages("text only", [])[0]["content"] == [{"type": "text", "text": "text only"}]


def test_loglikelihood(adapter, vlm):
    doc = DOCS[0]
    greedy = vlm.generate([adapter.messages(doc["question"], [doc["image"]])], config=GenerationConfig(max_new_tokens=3))[0]
    greedy_text = vlm.tokenizer.decode(greedy.token_ids)
    other = "circle" if not greedy_text.startswith("circle") else "square"
    reqs = [Req((doc["question"], greedy_text, to_visual, 0, "toy", "test")),
            Req((doc["question"], other, to_visual, 0, "toy", "test")),
            Req((doc["question"], lambda d: d["question"], to_visual, 0, "toy", "test"))]
    (ll_g, is_g), (ll_o, is_o), (ll_q, _) = adapter.loglikelihood(reqs)
    assert is_g is True and is_o is False
    assert ll_g < 0 and ll_o < 0 and ll_q < 0
    # the sum of log-probabilities equals the model's own mean loss over those tokens, times their count
    prompt = vlm.prompt(adapter.messages(doc["question"], [doc["image"]]))
    cont = vlm.tokenizer(other, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt.input_ids + cont])
    labels = torch.full_like(ids, -100)
    labels[0, len(prompt.input_ids):] = torch.tensor(cont)
    with torch.no_grad():
        loss = vlm.model(input_ids=ids, pixel_values=vlm.image_processor(prompt.images), labels=labels).loss
    assert ll_o == pytest.approx(-float(loss) * len(cont), rel=1e-5)


def test_generate_until_multi_round(adapter, vlm):
    seen = []

    def doc_to_text(doc, previous_output, round_idx, previous_round_info):
        seen.append((list(previous_output), round_idx, previous_round_info))
        if round_idx == 2:
            return None, None, True, previous_output, None
        return [doc["image"]], "what is the shape?", False, previous_output, {"round": round_idx}

    gen = {"max_new_tokens": 5}
    (rounds,) = adapter.generate_until_multi_round([Req(("what is the color?", gen, to_visual, doc_to_text, 0, "toy", "test"))])
    assert len(rounds) == 2
    assert rounds[0] == _direct(vlm, DOCS[0])
    assert rounds[1] == _direct(vlm, {"image": DOCS[0]["image"], "question": "what is the shape?"})
    assert seen[0] == ([rounds[0]], 1, None) and seen[1] == ([rounds[0], rounds[1]], 2, {"round": 1})


def test_create_from_arg_string(vlm, tmp_path):
    path = vlm.path
    a = VlmkitLMMS.create_from_arg_string(f"pretrained={path},max_new_tokens=7", {"batch_size": 2, "device": None})
    assert a.batch_size == 2 and a.default_max_new_tokens == 7 and a.pretrained == str(path)
