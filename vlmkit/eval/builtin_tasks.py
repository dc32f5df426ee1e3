"""Built-in tasks: easy-vqa from its package, the hook for the visual-world generator, and the
dual-encoder tasks retrieval and zeroshot-fmnist (data from embedding_data.py).

Each builder takes the eval cache root ($VLMKIT_CACHE/eval) and whether to show progress
bars, and returns the path of a task spec it wrote there, building it once (into a temporary
folder, renamed into place, so an interrupted build leaves nothing half-written).

visual-world: the generator lives in the data package. The contract is a function
`vlmkit.data.worlds.build_eval_task(out_dir: Path) -> Path` that writes a task spec
and samples (shared formats, slices such as counting / colour / spatial / grounding /
chart / reading / receipt, with their pass bars) under out_dir, idempotently, and
returns the spec's path. Until it exists, `--tasks visual-world` says so; any spec
path works meanwhile.

retrieval: text-to-image and image-to-image recall@1/5/10 on 200 held-out (test-split) scenes from
each of shapes, text and charts; no bar (the issue sets none), so it reports without gating.
zeroshot-fmnist: Fashion-MNIST's 10,000 test images, one template against the 12-template ensemble;
the ensemble row carries the default dual encoder's bar.
"""
from __future__ import annotations

import importlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from .tasks import DUAL_ENCODER, TaskError, register_task

EASY_VQA_BAR = 0.95  # the default model's launch bar (issue "Default model")
ZEROSHOT_FMNIST_BAR = 0.75  # the default dual encoder's bar, ensemble accuracy (issue "Default model")
WORLD_MODULE, WORLD_BUILDER = "vlmkit.data.worlds", "build_eval_task"


def build_once(root: Path, name: str, write: Callable[[Path], object]) -> Path:
    """root/name/task.json, written by write(folder) once: into a temporary folder renamed into place,
    so an interrupted build leaves nothing half-written."""
    out = root / name
    spec = out / "task.json"
    if spec.is_file():
        return spec
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}-"))
    try:
        write(tmp)
        try:
            tmp.rename(out)
        except OSError:  # another process built it first
            if not spec.is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return spec


def build_easy_vqa(root: Path, progress: bool = True) -> Path:  # a file copy: no bar
    if (root / "easy-vqa" / "task.json").is_file():
        return root / "easy-vqa" / "task.json"
    try:
        import easy_vqa
    except ImportError:
        raise TaskError("the built-in task 'easy-vqa' needs the easy-vqa package: pip install easy-vqa") from None

    def write(tmp: Path) -> None:
        (tmp / "images").mkdir()
        for image_id, src in easy_vqa.get_test_image_paths().items():
            shutil.copyfile(src, tmp / "images" / f"{image_id}.png")
        questions, answers, image_ids = easy_vqa.get_test_questions()
        with open(tmp / "samples.jsonl", "w") as f:
            for k, (q, a, i) in enumerate(zip(questions, answers, image_ids)):
                f.write(json.dumps({"id": f"easy-vqa-test-{k}", "image": f"images/{i}.png", "question": q,
                                    "answers": [a], "metric": "exact", "slice": "easy-vqa"}) + "\n")
        task = {"name": "easy-vqa", "samples": "samples.jsonl", "pass_bars": {"easy-vqa": EASY_VQA_BAR},
                "prompt": "{question}", "max_new_tokens": 8}
        (tmp / "task.json").write_text(json.dumps(task, indent=2) + "\n")

    return build_once(root, "easy-vqa", write)


def build_visual_world(root: Path, progress: bool = True) -> Path:
    try:
        module = importlib.import_module(WORLD_MODULE)
    except ModuleNotFoundError as e:
        if e.name and WORLD_MODULE.startswith(e.name):
            raise TaskError(f"task 'visual-world' needs the visual-world generator ({WORLD_MODULE}.{WORLD_BUILDER}), "
                            f"which this install lacks; pass a task spec path instead") from None
        raise
    build = getattr(module, WORLD_BUILDER, None)
    if build is None:
        raise TaskError(f"{WORLD_MODULE} has no {WORLD_BUILDER}(out_dir) -> spec path; pass a task spec path instead")
    # the folder names the sample format: a cache written before the shapes questions named their kind (v2) is
    # left alone and a new one is built beside it (a minute), so every report can split a slice by kind
    return Path(build(root / "visual-world-v2", progress=progress))


def build_retrieval(root: Path, progress: bool = True) -> Path:
    from .embedding_data import write_retrieval_task

    return build_once(root, "retrieval", lambda out: write_retrieval_task(out, progress=progress))


def build_zeroshot_fmnist(root: Path, progress: bool = True) -> Path:
    from .embedding_data import write_zeroshot_task

    return build_once(root, "zeroshot-fmnist", lambda out: write_zeroshot_task(out, bar=ZEROSHOT_FMNIST_BAR,
                                                                            progress=progress))


register_task("easy-vqa", build_easy_vqa, "easy-vqa test split: 9,673 questions on 1,000 images, exact match, bar 0.95")
register_task("visual-world", build_visual_world, f"visual-world slices, from {WORLD_MODULE}.{WORLD_BUILDER}")
register_task("retrieval", build_retrieval, "dual encoder: text-to-image and image-to-image recall@1/5/10, "
              "200 held-out scenes each of shapes, text, charts; no bar", DUAL_ENCODER)
register_task("zeroshot-fmnist", build_zeroshot_fmnist, "dual encoder: Fashion-MNIST test split zero-shot accuracy, "
              f"single template and 12-template ensemble, bar {ZEROSHOT_FMNIST_BAR} (ensemble)", DUAL_ENCODER)
