"""The harness end to end on a tiny random VLM: predictions, scoring, bars, exit codes, resume, reports."""
import shutil

import pytest

from fixtures.eval.tiny_vlm import save_tiny_vlm, write_images, write_task
from vlmkit.eval.harness import PREDICTIONS_FILE, EvalConfig, read_predictions, run_eval
from vlmkit.eval.metrics import evaluate
from vlmkit.eval.report import compare_runs, write_comparison, write_report
from vlmkit.eval.tasks import TaskError, load_samples, load_spec, register_task, resolve, select
from vlmkit.errors import VlmkitError
from vlmkit.generation import GenerationConfig, GenerationResult

QUESTIONS = {"colour": "what is the color?", "count": "how many are there?", "pope": "is there a circle?"}


def _samples(n_per_slice=4):
    out = []
    for i in range(n_per_slice):
        img = f"images/img{i % 4}.png"
        out.append({"id": f"col{i}", "image": img, "question": QUESTIONS["colour"], "answers": [["red", "green", "blue", "yellow"][i % 4]],
                    "metric": "exact", "slice": "colour"})
        out.append({"id": f"cnt{i}", "image": img, "question": QUESTIONS["count"], "answers": [str(i % 3 + 1)] * 3,
                    "metric": "vqa", "slice": "counting"})
        out.append({"id": f"pope{i}", "image": img, "question": QUESTIONS["pope"], "answers": ["yes" if i % 2 else "no"],
                    "metric": "yesno", "slice": "pope"})
    out.append({"id": "box0", "images": ["images/img0.png", "images/img1.png"], "question": "where is the square?",
                "answers": ["<box>0,0,500,500</box>"], "metric": "iou", "slice": "grounding"})
    return out


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return save_tiny_vlm(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="module")
def vlm(tiny_model):
    import vlmkit

    return vlmkit.load(tiny_model)


@pytest.fixture
def task_dir(tmp_path):
    write_images(tmp_path / "task" / "images")
    write_task(tmp_path / "task", _samples(), {"colour": 0.0, "pope": {"score": 0.0, "yes_ratio": 0.0}}, max_new_tokens=3)
    return tmp_path / "task"


class Oracle:
    """Answers from a table keyed by question; counts calls; can fail on one image or after some batches."""

    path = None

    def __init__(self, answers: dict, fail_image: str | None = None, interrupt_after: int | None = None):
        self.answers, self.fail_image, self.interrupt_after, self.calls = answers, fail_image, interrupt_after, []

    def generate(self, conversations, config: GenerationConfig):
        if self.interrupt_after is not None and len(self.calls) >= self.interrupt_after:
            raise KeyboardInterrupt
        self.calls.append(len(conversations))
        out = []
        for conv in conversations:
            parts = conv[0]["content"]
            if self.fail_image and any(p.get("image", "").endswith(self.fail_image) for p in parts):
                raise VlmkitError(f"cannot read {self.fail_image}")
            out.append(GenerationResult(self.answers.get(parts[-1]["text"], "?"), [], "stop"))
        return out


# ---- tasks ----
def test_task_validation_errors(tmp_path):
    write_images(tmp_path / "images", 1)
    good = {"id": "a", "image": "images/img0.png", "question": "q", "answers": ["x"], "metric": "exact", "slice": "s"}
    bad_cases = [
        ({k: v for k, v in good.items() if k != "answers"}, "missing 'answers'"),
        ({**good, "metric": "bleu"}, "unknown metric 'bleu'"),
        ({**good, "metric": "iou", "answers": ["10,10,20,20"]}, "<box>"),
        ({**good, "metric": "json_f1", "answers": ["{not json"]}, "JSON string"),
        ({**good, "image": "images/missing.png"}, "image not found"),
        ({**good, "answers": []}, "non-empty list"),
    ]
    for raw, message in bad_cases:
        spec = load_spec(write_task(tmp_path, [good, raw]))
        with pytest.raises(TaskError, match=message) as e:
            load_samples(spec)
        assert ":2:" in str(e.value)  # the line is named
    with pytest.raises(TaskError, match="duplicate id"):
        load_samples(load_spec(write_task(tmp_path, [good, good])))
    (tmp_path / "samples.jsonl").write_text('{"id": \n')
    with pytest.raises(TaskError, match="samples.jsonl:1: not valid JSON"):
        load_samples(load_spec(tmp_path / "task.json"))
    with pytest.raises(TaskError, match="must contain"):
        load_spec(write_task(tmp_path, [good], prompt="Answer briefly."))
    with pytest.raises(TaskError, match="must be a number"):
        load_spec(write_task(tmp_path, [good], {"s": "high"}))


def test_spec_forms_and_resolution(tmp_path, monkeypatch):
    write_images(tmp_path / "t" / "images", 1)
    s = {"id": "a", "image": "images/img0.png", "question": "q", "answers": ["x"], "metric": "exact", "slice": "s"}
    spec_path = write_task(tmp_path / "t", [s], {"s": 0.5, "t": {"score": 0.1, "f1": 0.2}}, name="mine",
                           prompt='Reply as {"answer": ...}. {question}')
    spec = resolve(str(tmp_path / "t"))  # a folder holding task.json
    assert spec.name == "mine" and spec.pass_bars == {"s": {"score": 0.5}, "t": {"score": 0.1, "f1": 0.2}}
    assert spec.render("why?") == 'Reply as {"answer": ...}. why?'  # other braces survive
    assert resolve(str(tmp_path / "t" / "samples.jsonl")).pass_bars == {}  # a bare samples file
    (tmp_path / "t" / "task.yaml").write_text("name: y\nsamples: samples.jsonl\npass_bars: {s: 0.25}\n")
    assert load_spec(tmp_path / "t" / "task.yaml").pass_bars == {"s": {"score": 0.25}}
    asked = []
    register_task("unit-test-task", lambda root, progress: asked.append(progress) or spec_path, "for a test")
    assert resolve("unit-test-task").name == "mine"
    assert resolve("unit-test-task", progress=False).name == "mine"
    assert asked == [True, False]  # `vlmkit eval --no-progress` reaches the builder of a built-in task
    monkeypatch.setenv("VLMKIT_CACHE", str(tmp_path / "cache"))
    shutil.copytree(tmp_path / "t", tmp_path / "cache" / "eval" / "generated")
    assert resolve("generated").name == "mine"  # what a data generator leaves in the cache
    with pytest.raises(TaskError, match="unknown task 'nope'.*easy-vqa"):
        resolve("nope")


def test_limit_keeps_every_slice(task_dir):
    samples = load_samples(load_spec(task_dir))
    picked = select(samples, 2)
    assert [s.id for s in picked] == ["col0", "cnt0", "pope0", "col1", "cnt1", "pope1", "box0"]


# ---- harness ----
def test_scores_bars_and_failures_with_an_oracle(task_dir, tmp_path):
    answers = {QUESTIONS["colour"]: "Red.", QUESTIONS["count"]: "two", QUESTIONS["pope"]: "No, there is not."}
    spec = load_spec(write_task(task_dir, _samples(), {"colour": 0.25, "counting": 0.5, "pope": {"score": 0.5, "recall": 0.1},
                                                         "reading": 0.9}, max_new_tokens=3))
    results = run_eval(Oracle(answers), [spec], tmp_path / "run", EvalConfig(batch_size=5, progress=False))
    rows = {r["name"]: r for r in results["tasks"][spec.name]["slices"]}
    assert rows["colour"]["score"] == 0.25 and rows["colour"]["status"] == "pass"  # only img0 is red
    # counting: truths 1,2,3,1 (three humans each); "two" -> "2" matches sample 1 only: min(1, 2/3) per subset
    assert rows["counting"]["score"] == pytest.approx((2 / 3) / 4) and rows["counting"]["status"] == "fail"
    assert rows["pope"]["score"] == 0.5 and rows["pope"]["extras"]["recall"] == 0.0 and rows["pope"]["status"] == "fail"
    assert rows["grounding"]["status"] == "none" and rows["reading"]["status"] == "missing"
    assert results["passed"] is False
    assert [f.split(":")[0] for f in results["failures"]] == ["tiny/counting", "tiny/pope", "tiny/reading"]
    assert "recall 0.0000 < 0.1" in results["failures"][1]


def test_a_slice_with_two_metrics_scores_the_mean_of_its_samples(tmp_path):
    write_images(tmp_path / "images", 2)
    mk = lambda i, q, a, m: {"id": f"s{i}", "image": f"images/img{i % 2}.png", "question": q, "answers": a, "metric": m, "slice": "spatial"}
    samples = [mk(0, "is the circle left?", ["yes"], "yesno"), mk(1, "is the square left?", ["no"], "yesno"),
               mk(2, "which is on top?", ["circle"], "exact"), mk(3, "which is lowest?", ["square", "the square"], "exact")]
    spec = load_spec(write_task(tmp_path, samples, {"spatial": {"score": 0.7, "yesno/score": 0.6}}))
    answers = {"is the circle left?": "Yes.", "is the square left?": "yes", "which is on top?": "Circle", "which is lowest?": "the square"}
    results = run_eval(Oracle(answers), [spec], tmp_path / "run", EvalConfig(progress=False))
    (row,) = results["tasks"]["tiny"]["slices"]
    assert row["metric"] == "yesno+exact" and row["n"] == 4
    assert row["score"] == 0.75 and row["extras"]["yesno/score"] == 0.5 and row["extras"]["exact/score"] == 1.0
    assert row["extras"]["yesno/yes_ratio"] == 1.0 and row["extras"]["exact/n"] == 2
    assert [c["passed"] for c in row["checks"]] == [True, False] and row["status"] == "fail"
    assert "yesno/score 0.5000 < 0.6" in results["failures"][0]
    assert "spatial-yesno-confusion.png" in write_report(tmp_path / "run").read_text()


def test_a_slice_is_also_scored_by_the_kinds_its_samples_name(tmp_path):
    """"kind" groups a slice's questions ("relation: left / right"); each group gets its n and mean score."""
    write_images(tmp_path / "images", 2)
    mk = lambda i, a, kind: {"id": f"s{i}", "image": f"images/img{i % 2}.png", "question": f"q{i}?", "answers": a,
                             "metric": "yesno", "slice": "spatial", **({"kind": kind} if kind else {})}
    samples = [mk(0, ["yes"], "left / right"), mk(1, ["no"], "left / right"), mk(2, ["no"], "left / right"),
               mk(3, ["yes"], "above / below"), mk(4, ["no"], "")]
    spec = load_spec(write_task(tmp_path, samples, {}))
    results = run_eval(Oracle({f"q{i}?": "yes" for i in range(5)}), [spec], tmp_path / "run", EvalConfig(progress=False))
    (row,) = results["tasks"]["tiny"]["slices"]
    assert row["score"] == 0.4  # the unnamed sample counts in the slice, in no kind
    assert row["by_kind"] == {"above / below": {"n": 1, "score": 1.0, "metric": "yesno"},
                              "left / right": {"n": 3, "score": 1 / 3, "metric": "yesno"}}
    report = write_report(tmp_path / "run", charts=False).read_text()
    assert "| spatial | left / right | yesno | 3 | 0.3333 |" in report and "| spatial | above / below | yesno | 1 | 1.0000 |" in report
    assert "tiny-kinds.png" in write_report(tmp_path / "run").read_text() and (tmp_path / "run" / "charts" / "tiny-kinds.png").is_file()
    # against a run that answers "no" throughout, kind by kind
    run_eval(Oracle({f"q{i}?": "no" for i in range(5)}), [spec], tmp_path / "run-no", EvalConfig(progress=False))
    rows = {r["slice"]: r for r in compare_runs(tmp_path / "run", tmp_path / "run-no")}
    assert rows["spatial [left / right]"]["a"] == pytest.approx(1 / 3) and rows["spatial [left / right]"]["b"] == pytest.approx(2 / 3)
    assert rows["spatial [above / below]"]["delta"] == -1.0 and rows["spatial [above / below]"]["n_b"] == 1
    assert rows["spatial"]["delta"] == pytest.approx(0.2)


def test_each_slice_reports_the_best_constant_answer(tmp_path):
    write_images(tmp_path / "images", 2)
    mk = lambda i, a, m, sl: {"id": f"s{i}", "image": f"images/img{i % 2}.png", "question": f"q{i}?", "answers": a,
                              "metric": m, "slice": sl}
    samples = [mk(0, ["1"], "exact", "count"), mk(1, ["1"], "exact", "count"), mk(2, ["1"], "exact", "count"),
               mk(3, ["2"], "exact", "count"),
               mk(4, ["yes"], "yesno", "spatial"), mk(5, ["no"], "yesno", "spatial"), mk(6, ["yes"], "yesno", "spatial"),
               mk(7, ["circle"], "exact", "spatial"), mk(8, ["square"], "exact", "spatial"), mk(9, ["square"], "exact", "spatial")]
    spec = load_spec(write_task(tmp_path, samples, {}))
    results = run_eval(Oracle({}), [spec], tmp_path / "run", EvalConfig(progress=False))
    rows = {r["name"]: r for r in results["tasks"]["tiny"]["slices"]}
    assert rows["count"]["prior"] == 0.75 and rows["count"]["prior_answers"] == {"exact": "1"}
    # "yes" to the yes/no questions (2 of 3) and "square" to the others (2 of 3): 4 of 6
    assert rows["spatial"]["prior"] == pytest.approx(4 / 6)
    assert rows["spatial"]["prior_answers"] == {"yesno": "yes", "exact": "square"}
    report = write_report(tmp_path / "run", charts=False).read_text()
    assert "| count | exact | 4 | 0.0000 | 0.7500 (1) |" in report and "0.6667 (yes; square)" in report


def test_tiny_model_end_to_end(vlm, task_dir, tmp_path):
    spec = load_spec(task_dir)
    out = tmp_path / "run"
    results = run_eval(vlm, [spec], out, EvalConfig(batch_size=3, progress=False))
    samples = load_samples(spec)
    preds = read_predictions(out / spec.name / PREDICTIONS_FILE)
    assert list(preds) == [s.id for s in samples] and not any(p["error"] for p in preds.values())
    # each prediction is what the model says to that prompt, batched as the harness batched it
    cfg = GenerationConfig(max_new_tokens=3)
    for start in range(0, len(samples), 3):
        batch = samples[start:start + 3]
        convs = [[{"role": "user", "content": [{"type": "image", "image": str(p)} for p in s.images] + [{"type": "text", "text": s.question}]}]
                 for s in batch]
        for s, r in zip(batch, vlm.generate(convs, config=cfg)):
            assert preds[s.id]["prediction"] == r.text.strip()
    # slice scores are the metrics applied to those predictions
    for row in results["tasks"][spec.name]["slices"]:
        mine = [s for s in samples if s.slice == row["slice"]]
        expected = evaluate(row["metric"], [preds[s.id]["prediction"] for s in mine], [s.answers for s in mine])
        assert row["score"] == pytest.approx(expected.score) and row["n"] == len(mine)
    assert results["passed"] is True and results["model"]["sha256"]
    report = write_report(out, results)
    text = report.read_text()
    assert "| colour | exact | 4 |" in text and "verdict: **PASS**" in text
    charts = sorted(p.name for p in (out / "charts").iterdir())
    assert "tiny-slices.png" in charts and "tiny-colour-confusion.png" in charts and "tiny-pope-confusion.png" in charts
    assert (out / "charts" / "tiny-slices.png").read_bytes()[:4] == b"\x89PNG"


def test_resume_equals_fresh(vlm, task_dir, tmp_path):
    spec = load_spec(task_dir)
    fresh = run_eval(vlm, [spec], tmp_path / "fresh", EvalConfig(batch_size=2, progress=False))

    class Interrupting:  # the real model, cut off after two batches
        path, calls = vlm.path, 0

        def generate(self, conversations, config):
            if self.calls == 2:
                raise KeyboardInterrupt
            self.calls += 1
            return vlm.generate(conversations, config=config)

    with pytest.raises(KeyboardInterrupt):
        run_eval(Interrupting(), [spec], tmp_path / "resumed", EvalConfig(batch_size=2, progress=False))
    assert len(read_predictions(tmp_path / "resumed" / spec.name / PREDICTIONS_FILE)) == 4
    with pytest.raises(VlmkitError, match="--resume"):
        run_eval(vlm, [spec], tmp_path / "resumed", EvalConfig(batch_size=2, progress=False))
    with pytest.raises(VlmkitError, match="different settings"):
        run_eval(vlm, [spec], tmp_path / "resumed", EvalConfig(batch_size=3, resume=True, progress=False))

    counting = Interrupting()
    counting.calls = -100  # never interrupts; counts the batches it runs
    resumed = run_eval(counting, [spec], tmp_path / "resumed", EvalConfig(batch_size=2, resume=True, progress=False))
    assert counting.calls == -100 + 5  # 13 samples = 7 batches of 2; the first two were saved
    strip = lambda p: {k: v for k, v in p.items() if k != "seconds"}
    a = read_predictions(tmp_path / "fresh" / spec.name / PREDICTIONS_FILE)
    b = read_predictions(tmp_path / "resumed" / spec.name / PREDICTIONS_FILE)
    assert [strip(a[k]) for k in a] == [strip(b[k]) for k in a]
    assert fresh["tasks"] == resumed["tasks"]


def test_a_bad_image_is_recorded_not_fatal_and_retried(task_dir, tmp_path):
    spec = load_spec(task_dir)
    answers = {QUESTIONS["colour"]: "red"}
    out = tmp_path / "run"
    first = run_eval(Oracle(answers, fail_image="img1.png"), [spec], out, EvalConfig(batch_size=4, progress=False))
    preds = read_predictions(out / spec.name / PREDICTIONS_FILE)
    bad = sorted(k for k, p in preds.items() if p["error"])
    assert bad == ["box0", "cnt1", "col1", "pope1"] and "cannot read img1.png" in preds["col1"]["error"]
    assert first["tasks"][spec.name]["errors"] == 4
    rows = {r["name"]: r for r in first["tasks"][spec.name]["slices"]}
    assert rows["pope"]["score"] == 0.25  # "?" reads as yes (right for pope3 only); the failed pope1 counts as wrong
    assert rows["pope"]["errors"] == 1
    oracle = Oracle(answers)
    second = run_eval(oracle, [spec], out, EvalConfig(batch_size=4, resume=True, progress=False))
    assert sum(oracle.calls) == 4 and second["tasks"][spec.name]["errors"] == 0
    with pytest.raises(VlmkitError, match="every sample failed"):
        run_eval(Oracle({}, fail_image=".png"), [spec], tmp_path / "all-bad", EvalConfig(progress=False))


# ---- CLI: exit codes follow the bars ----
def _cli(*argv):
    from vlmkit.cli import main

    return main([str(a) for a in argv])


def test_cli_exit_code_follows_pass_bars(tiny_model, task_dir, tmp_path, capsys):
    ok = _cli("eval", "--model", tiny_model, "--tasks", task_dir, "--out", tmp_path / "a", "--limit", "1", "--no-progress")
    assert ok == 0
    out = capsys.readouterr().out
    assert "colour" in out and "PASS" in out and "report:" in out
    write_task(task_dir, _samples(), {"colour": 1.01}, max_new_tokens=3)  # a bar no score reaches
    assert _cli("eval", "--model", tiny_model, "--tasks", task_dir, "--out", tmp_path / "b", "--limit", "1", "--no-progress") == 1
    assert "FAIL tiny/colour" in capsys.readouterr().err
    # the same folder again without --resume is refused; nothing is overwritten
    assert _cli("eval", "--model", tiny_model, "--tasks", task_dir, "--out", tmp_path / "b", "--limit", "1", "--no-progress") == 2
    assert "--resume" in capsys.readouterr().err
    assert _cli("eval", "--model", tiny_model, "--tasks", "no-such-task", "--out", tmp_path / "c") == 2

    assert _cli("eval-compare", tmp_path / "a", tmp_path / "b", "--out", tmp_path / "cmp") == 0
    table = capsys.readouterr().out
    assert "| tiny | colour | exact |" in table and "+0.0000" in table
    rows = compare_runs(tmp_path / "a", tmp_path / "b")
    colour = next(r for r in rows if r["slice"] == "colour")
    assert colour["delta"] == pytest.approx(colour["b"] - colour["a"]) and colour["status_b"] == "fail"
    assert (tmp_path / "cmp" / "compare.png").is_file() and (tmp_path / "cmp" / "compare.md").is_file()
    assert write_comparison(tmp_path / "a", tmp_path / "b", tmp_path / "cmp2").read_text().startswith("# a (A) against b (B)")


def test_builtin_easy_vqa_task_is_built_once(tmp_path, monkeypatch):
    pytest.importorskip("easy_vqa")
    monkeypatch.setenv("VLMKIT_CACHE", str(tmp_path))
    spec = resolve("easy-vqa")
    assert spec.pass_bars == {"easy-vqa": {"score": 0.95}} and spec.samples.parent == tmp_path / "eval" / "easy-vqa"
    samples = load_samples(spec)
    assert len(samples) == 9673 and {s.slice for s in samples} == {"easy-vqa"} and all(s.images[0].is_file() for s in samples[:50])
    stamp = spec.spec_path.stat().st_mtime_ns
    assert resolve("easy-vqa").spec_path.stat().st_mtime_ns == stamp
