"""scripts/make_abstain_data.py: every answer becomes the abstention, the questions and images stay."""
import json

import pytest
import repo_file

from vlmkit.data.unsure import UNSURE


def test_every_answer_is_the_abstention_and_the_questions_are_kept(tmp_path):
    mod = repo_file.load("scripts/make_abstain_data.py")
    rows = [{"id": "c0", "image": "images/c0.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat is the value for Jul?"}, {"from": "gpt", "value": "349"},
        {"from": "human", "value": "Which bar is the lowest?"}, {"from": "gpt", "value": "Jul"}]}]
    (tmp_path / "conversations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    mod.main([str(tmp_path)])
    out = [json.loads(line) for line in (tmp_path / "abstain.jsonl").read_text().splitlines()]
    assert len(out) == 1 and out[0]["id"] == "c0-abstain" and out[0]["image"] == "images/c0.png"
    turns = out[0]["conversations"]
    assert [t["value"] for t in turns[::2]] == ["<image>\nWhat is the value for Jul?", "Which bar is the lowest?"]
    assert [t["value"] for t in turns[1::2]] == [UNSURE, UNSURE]
    assert rows[0]["conversations"][1]["value"] == "349"  # the source is not touched


def test_a_folder_without_conversations_is_a_clear_error(tmp_path):
    mod = repo_file.load("scripts/make_abstain_data.py")
    with pytest.raises(SystemExit, match="not found"):
        mod.main([str(tmp_path)])
