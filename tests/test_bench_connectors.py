"""bench/connectors/accuracy.py's pure parts: merging its section into results.md (which run.py also
rewrites) without touching the rest, the table's rows, and the command it records."""

import pytest
import repo_file


@pytest.fixture(scope="module")
def acc():
    return repo_file.load("bench/connectors/accuracy.py")


def section(acc, body: str) -> str:
    return f"{acc.SECTION}\n\n{body}\n"


def test_merge_appends_when_absent_and_keeps_the_rest(acc):
    md = "# Connectors\n\n| a |\n|---|\n\n![plot](plot.png)\n"
    out = acc.merge_section(md, section(acc, "first"))
    assert out.startswith(md.rstrip("\n") + "\n\n" + acc.SECTION)
    assert out.endswith("first\n")


def test_merge_replaces_only_its_own_section(acc):
    md = f"# Connectors\n\ntable\n\n{acc.SECTION}\n\nold numbers\n\n## Another section\n\nkept\n"
    out = acc.merge_section(md, section(acc, "new numbers"))
    assert "old numbers" not in out and "new numbers" in out
    assert out.startswith("# Connectors\n\ntable\n\n") and out.endswith("\n\n## Another section\n\nkept\n")
    assert acc.merge_section(out, section(acc, "new numbers")) == out  # idempotent


def test_table_rows_and_fine_coarse_means(acc):
    s = {"counting": {"score": 0.5, "n": 4, "metric": "exact"}, "reading": {"score": 0.25, "n": 4, "metric": "exact"},
         "colour": {"score": 1.0, "n": 4, "metric": "exact"}}
    ok = dict(kind="linear", seq_tokens=64, trainable_params=111168, slices=s, step_s=0.5, final_loss=1.25)
    header, rule, row, err = acc.table([ok, dict(kind="flamingo", error="CUDA out of memory")])
    assert header.count("|") == rule.count("|") == row.count("|") == err.count("|")
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:6] == ["linear", "64", "111,168", "50.0", "25.0", "100.0"]
    assert cells[-4:] == ["37.5", "100.0", "0.50", "1.250"]  # fine = mean(counting, reading); coarse = colour
    assert cells[6:8] == ["-", "-"]  # spatial and grounding not scored


def test_command_names_only_changed_flags(acc):
    assert acc.command(acc.parse_args([])) == "`.venv/bin/python bench/connectors/accuracy.py`"
    cmd = acc.command(acc.parse_args(["--steps", "2", "--connectors", "linear,qformer"]))
    assert cmd == "`.venv/bin/python bench/connectors/accuracy.py --steps 2 --connectors linear,qformer`"


def test_verdict_flags_a_budget_that_separated_nothing(acc):
    same = {"counting": {"score": 0.4, "n": 5, "metric": "exact"}, "colour": {"score": 0.0, "n": 5, "metric": "exact"}}
    other = {**same, "colour": {"score": 0.2, "n": 5, "metric": "exact"}}
    rows = [dict(kind="linear", slices=same), dict(kind="qformer", slices=dict(same)), dict(kind="x", error="oom")]
    assert "ranks no connector" in acc.verdict(rows)[0]
    assert acc.verdict([dict(kind="linear", slices=same), dict(kind="qformer", slices=other)]) == []
    assert acc.verdict([dict(kind="linear", slices=same)]) == []  # one row is no comparison


@pytest.mark.parametrize("size, tokens", [(112, 64), (224, 144)])
def test_cabstractor_pools_to_at_most_the_patch_grid(acc, size, tokens):
    """At 112 px the tower has 8x8 patches: the C-Abstractor row must pool to 8x8, not upsample to its
    default 12x12 (which would hand the LM more tokens than there are patches)."""
    import torch

    from vlmkit.train.stages import small_lm

    lm = small_lm("smollm2", dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                  num_key_value_heads=2, head_dim=16))
    model, *_, pixels = acc.zoo().build("cabstractor", size, lm)
    with torch.no_grad():
        assert model.encode_images(pixels).shape == (1, tokens, 32)  # [B, K, D_lm]
