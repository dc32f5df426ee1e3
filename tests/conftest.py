import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or max(1, min(2, os.cpu_count() or 1))))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random VLM saved as a model folder (with SmolLM2's tokenizer), for CLI and server tests."""
    from tiny import tiny_vlm

    d = tmp_path_factory.mktemp("tiny-vlm")
    vlm = tiny_vlm()
    vlm.model.save_pretrained(d, tokenizer=vlm.tokenizer)
    return d
