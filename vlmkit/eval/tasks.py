"""Tasks as data: a spec file plus a samples JSONL (formats shared with the data engineers).

Spec (JSON, or YAML with PyYAML installed):
    {"name": "easy-vqa", "samples": "samples.jsonl",
     "pass_bars": {"easy-vqa": 0.95, "receipt": {"score": 0.9, "f1/total": 0.95}},
     "prompt": "{question}", "max_new_tokens": 8}
A bar is a minimum for the slice's headline score, or a dict of minimums for the
headline ("score") and for named extras of the slice's metric. Every slice with a
bar is required. `prompt` is a template in which "{question}" is replaced (plain
replacement, so other braces, as in a JSON schema, stay as they are).

Samples, one JSON object a line:
    {"id": str, "image": "path" | "images": [paths], "question": str,
     "answers": [str, ...], "metric": "vqa"|"exact"|"anls"|"relaxed"|"iou"|"cider"|"json_f1"|"yesno",
     "slice": str, "kind": str (optional: a finer group inside the slice, scored apart in results and reports)}
Image paths are relative to the JSONL's folder unless absolute.

Embedding tasks for a dual encoder (retrieval recall, zero-shot accuracy) are specs
with a "kind" other than "generate"; their formats are in embedding.py. A run takes
one kind of model: generative tasks need a VLM, embedding tasks a dual encoder.

A task name resolves, in order, to: an existing path (a spec file, a samples
.jsonl, or a folder holding task.json / task.yaml); a registered task (built-ins
in builtin_tasks.py, or any added with `register_task`); a folder
$VLMKIT_CACHE/eval/NAME holding a task.json, as a data generator may leave.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar

from ..errors import VlmkitError
from .metrics import METRICS
from .metrics.boxes import parse_box

SPEC_NAMES = ("task.json", "task.yaml", "task.yml")
GENERATE = "generate"
VLM, DUAL_ENCODER = "vlm", "dual_encoder"  # the two kinds of model a task can need
MODEL_WORDS = {VLM: "a generative VLM", DUAL_ENCODER: "a dual encoder"}


class TaskError(VlmkitError):
    """A task spec or sample file is missing or malformed."""


@dataclass
class Sample:
    id: str
    images: list[Path]
    question: str
    answers: list[str]
    metric: str
    slice: str
    kind: str = ""  # a finer group inside the slice, scored apart (results.json "by_kind")


@dataclass
class TaskSpec:
    kind: ClassVar[str] = GENERATE
    model_kind: ClassVar[str] = VLM

    name: str
    samples: Path
    pass_bars: dict[str, dict[str, float]] = field(default_factory=dict)
    prompt: str = "{question}"
    max_new_tokens: int = 32
    spec_path: Path | None = None

    def __post_init__(self):
        self.samples = Path(self.samples)
        if "{question}" not in self.prompt:
            raise TaskError(f"task {self.name!r}: prompt must contain {{question}}")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise TaskError(f"task {self.name!r}: max_new_tokens must be a positive integer")
        self.pass_bars = {str(k): _bar(self.name, k, v) for k, v in (self.pass_bars or {}).items()}

    def render(self, question: str) -> str:
        return self.prompt.replace("{question}", question)

    def fingerprint(self) -> dict:
        """What a resumed run must share with the run it continues."""
        digest = hashlib.sha256(self.samples.read_bytes()).hexdigest()
        return {"samples_sha256": digest, "prompt": self.prompt, "max_new_tokens": self.max_new_tokens}


def _bar(task: str, slice_name, value) -> dict[str, float]:
    if isinstance(value, bool) or not isinstance(value, (int, float, dict)):
        raise TaskError(f"task {task!r}: pass bar for slice {slice_name!r} must be a number or a dict of numbers")
    bars = value if isinstance(value, dict) else {"score": value}
    for k, v in bars.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TaskError(f"task {task!r}: pass bar {slice_name!r}.{k} must be a number, got {v!r}")
    return {str(k): float(v) for k, v in bars.items()}


# ---- reading ----
def load_spec(path: str | Path) -> TaskSpec:
    path = Path(path)
    if path.is_dir():
        found = [path / n for n in SPEC_NAMES if (path / n).is_file()]
        if not found:
            raise TaskError(f"{path} holds no task spec ({' / '.join(SPEC_NAMES)})")
        path = found[0]
    if not path.is_file():
        raise TaskError(f"task spec not found: {path}")
    if path.suffix == ".jsonl":  # a bare samples file: a task with no bars
        return TaskSpec(name=path.stem, samples=path, spec_path=None)
    raw = _read_mapping(path)
    kind = raw.get("kind", GENERATE)
    if kind != GENERATE:
        from .embedding import load_embedding_spec  # raises on a kind it does not know

        return load_embedding_spec(path, raw)
    unknown = set(raw) - {"name", "kind", "samples", "pass_bars", "prompt", "max_new_tokens"}
    if unknown:
        raise TaskError(f"{path}: unknown keys {sorted(unknown)}")
    if "samples" not in raw:
        raise TaskError(f"{path}: needs 'samples' (the samples JSONL, relative to the spec)")
    samples = Path(raw["samples"])
    samples = samples if samples.is_absolute() else path.parent / samples
    return TaskSpec(name=str(raw.get("name") or path.parent.name), samples=samples, pass_bars=raw.get("pass_bars") or {},
                    prompt=raw.get("prompt") or "{question}", max_new_tokens=raw.get("max_new_tokens", 32), spec_path=path)


def _read_mapping(path: Path) -> dict:
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise TaskError("reading a YAML task spec needs PyYAML: pip install pyyaml") from None
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise TaskError(f"{path}: not valid YAML ({e})") from None
    else:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise TaskError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(raw, dict):
        raise TaskError(f"{path}: a task spec must be an object")
    return raw


def load_samples(spec: TaskSpec) -> list[Sample]:
    """Every sample, validated; errors name the file and line."""
    return read_samples(spec.name, spec.samples, _sample)


def read_samples(task: str, path: Path, parse: Callable) -> list:
    """parse(raw, root, where) -> a sample with .id, for each line of a samples JSONL; ids must be unique."""
    if not path.is_file():
        raise TaskError(f"task {task!r}: samples file not found: {path}")
    root = path.parent
    samples, seen = [], set()
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as e:
                raise TaskError(f"{where}: not valid JSON ({e.msg})") from None
            s = parse(raw, root, where)
            if s.id in seen:
                raise TaskError(f"{where}: duplicate id {s.id!r}")
            seen.add(s.id)
            samples.append(s)
    if not samples:
        raise TaskError(f"task {task!r}: {path} has no samples")
    return samples


def _sample(raw, root: Path, where: str) -> Sample:
    if not isinstance(raw, dict):
        raise TaskError(f"{where}: each line must be a JSON object")
    for key in ("id", "question", "answers", "metric", "slice"):
        if key not in raw:
            raise TaskError(f"{where}: missing {key!r}")
    metric = raw["metric"]
    if metric not in METRICS:
        raise TaskError(f"{where}: unknown metric {metric!r} (known: {', '.join(METRICS)})")
    answers = raw["answers"]
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
        raise TaskError(f"{where}: 'answers' must be a non-empty list of strings")
    if metric == "iou" and parse_box(answers[0]) is None:
        raise TaskError(f"{where}: 'iou' answers must be <box>x1,y1,x2,y2</box>, got {answers[0]!r}")
    if metric == "json_f1":
        try:
            json.loads(answers[0])
        except json.JSONDecodeError:
            raise TaskError(f"{where}: 'json_f1' answers[0] must be a JSON string") from None
    paths = raw.get("images") if "images" in raw else ([raw["image"]] if raw.get("image") is not None else [])
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise TaskError(f"{where}: 'image' must be a path or 'images' a list of paths")
    images = [image_path(p, root, where) for p in paths]
    return Sample(id=str(raw["id"]), images=images, question=str(raw["question"]), answers=answers, metric=metric,
                  slice=str(raw["slice"]), kind=str(raw.get("kind") or ""))


def image_path(path: str, root: Path, where: str) -> Path:
    """A sample's image, relative to its JSONL's folder unless absolute; it must exist."""
    p = Path(path)
    p = p if p.is_absolute() else root / p
    if not p.is_file():
        raise TaskError(f"{where}: image not found: {p}")
    return p


def select(samples: list[Sample], limit: int | None) -> list[Sample]:
    """The first `limit` samples of each slice, in file order (every slice stays represented)."""
    if limit is None:
        return list(samples)
    taken: dict[str, int] = {}
    out = []
    for s in samples:
        if taken.get(s.slice, 0) < limit:
            taken[s.slice] = taken.get(s.slice, 0) + 1
            out.append(s)
    return out


def check_model_kind(needs: dict[str, str], model_kind: str, model_name: str = "the model") -> None:
    """needs: task name -> the model kind it needs. Refuses, before any work, a task the model cannot run
    (a VLM gives no embeddings, a dual encoder no text)."""
    wrong = [name for name, kind in needs.items() if kind != model_kind]
    if not wrong:
        return
    needed = needs[wrong[0]]
    hint = ("pass --model a dual-encoder directory (such as weights/vlmkit-clip)" if needed == DUAL_ENCODER
            else "pass --model a VLM directory, or run embedding tasks (retrieval, zeroshot-fmnist) on this one")
    raise TaskError(f"task(s) {', '.join(map(repr, wrong))} need {MODEL_WORDS[needed]}, but {model_name} is "
                    f"{MODEL_WORDS[model_kind]}: {hint}; one run evaluates one kind of model")


# ---- the registry ----
# (cache root, show progress bars) -> path of the spec it wrote (idempotent)
Builder = Callable[[Path, bool], Path]
_REGISTRY: dict[str, tuple[Builder, str, str]] = {}


def register_task(name: str, builder: Builder, description: str = "", model_kind: str = VLM) -> None:
    """model_kind: what the task needs (VLM or DUAL_ENCODER), so a mismatch is refused before the task is built."""
    _REGISTRY[name] = (builder, description, model_kind)


def registered_tasks() -> dict[str, str]:
    from . import builtin_tasks  # noqa: F401  (registers the built-ins)

    return {name: desc for name, (_, desc, _) in sorted(_REGISTRY.items())}


def registered_model_kind(name: str) -> str | None:
    """The model kind a registered task name needs, known without building it; None for a path or an unknown name."""
    if Path(name).expanduser().exists():
        return None
    registered_tasks()
    return _REGISTRY[name][2] if name in _REGISTRY else None


def eval_cache() -> Path:
    from ..models.lm import cache_dir

    return cache_dir() / "eval"


def resolve(name: str, progress: bool = True) -> TaskSpec:
    """A task spec from a path, a registered name (built into the eval cache the first time, with progress bars
    unless progress is False) or a folder already in the cache."""
    path = Path(name).expanduser()
    if path.exists():
        return load_spec(path)
    known = registered_tasks()
    if name in _REGISTRY:
        root = eval_cache()
        root.mkdir(parents=True, exist_ok=True)
        return load_spec(_REGISTRY[name][0](root, progress))
    cached = eval_cache() / name
    if cached.is_dir() and any((cached / n).is_file() for n in SPEC_NAMES):
        return load_spec(cached)
    raise TaskError(f"unknown task {name!r}: not a path, not a registered task ({', '.join(known)}), "
                    f"and no {eval_cache() / name}/task.json")
