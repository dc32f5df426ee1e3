"""One generated (or loaded) example, and its records in the shared on-disk formats.

A Sample is an image plus everything derived from its ground truth: a caption
(stage 1), question/answer pairs (stage 2 and evaluation) and the truth itself.
The record helpers take the image path so that the in-memory API and the
exporter produce exactly the same JSON.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from ..errors import VlmkitError


class DataError(VlmkitError):
    """A data source is missing, a file is malformed, or a request cannot be met."""


@dataclass
class QA:
    question: str
    answer: str  # the canonical answer, used as the training target
    slice: str  # "counting", "colour", "spatial", "grounding", "chart", "reading", "receipt", ...
    metric: str  # "exact" | "yesno" | "relaxed" | "iou" | "json_f1" | ...
    alternatives: list[str] = field(default_factory=list)  # other answers a grader should accept ("three" for "3")
    kind: str = ""  # a finer group inside the slice ("left / right" relations), scored apart in eval reports

    @property
    def answers(self) -> list[str]:
        return [self.answer] + [a for a in self.alternatives if a != self.answer]


@dataclass
class Sample:
    id: str
    image: Image.Image
    caption: str
    qa: list[QA]
    truth: dict[str, Any]  # JSON-serialisable ground truth (objects and boxes, values, receipt fields)
    source: str
    split: str
    seed: int | None = None  # the derived per-sample seed for generated data; None for fixed datasets
    label: str | None = None  # class name, for classification sources
    label_id: int | None = None

    def conversation(self, image_path: str) -> dict:
        """LLaVA-style record: the image placeholder goes in the first human turn only."""
        turns = []
        for k, qa in enumerate(self.qa):
            turns.append({"from": "human", "value": ("<image>\n" if k == 0 else "") + qa.question})
            turns.append({"from": "gpt", "value": qa.answer})
        return {"id": self.id, "image": image_path, "conversations": turns}

    def caption_record(self, image_path: str) -> dict:
        return {"id": self.id, "image": image_path, "text": self.caption}

    def eval_records(self, image_path: str) -> list[dict]:
        return [
            {"id": f"{self.id}-q{k}", "image": image_path, "question": qa.question, "answers": qa.answers,
             "metric": qa.metric, "slice": qa.slice, **({"kind": qa.kind} if qa.kind else {})}
            for k, qa in enumerate(self.qa)
        ]

    def truth_record(self, image_path: str) -> dict:
        rec = {"id": self.id, "image": image_path, "source": self.source, "split": self.split, "seed": self.seed,
               "truth": self.truth}
        if self.label is not None:
            rec["label"], rec["label_id"] = self.label, self.label_id
        return rec
