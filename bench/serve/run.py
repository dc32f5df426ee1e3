"""Load test for `vlmkit serve`: N concurrent clients against the same requests sent one at a time.

The server runs as its own process (`vlmkit serve`) on 127.0.0.1; the clients are
asyncio coroutines in this process. Each level sends the same fixed list of
requests (an image from vlmkit/assets/examples plus a question, greedy, max_tokens
fixed), so the batching gain is throughput at N clients / throughput at 1 client,
measured in the same run. A last run mixes malformed requests in and checks that
the good ones still succeed with the same answers.

    .venv/bin/python bench/serve/run.py                       # tiny random model (fast), writes results.md + results.png
    .venv/bin/python bench/serve/run.py --model weights/vlmkit-smol-untrained --requests 16 --max-tokens 8 --concurrency 1 4 16

Bounded: --requests per level and --time-limit for the whole run (levels that would start after it are skipped).
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
EXAMPLES = ROOT / "vlmkit" / "assets" / "examples"
QUESTIONS = ["What is in the picture?", "Describe the colours.", "Is there a person?", "What is the main object?",
             "Where was this taken?", "Count the objects.", "What time of day is it?", "Write a caption."]


def tiny_model_dir(path: Path) -> Path:
    """A random tiny VLM (16 px-patch ViT 24 wide, 2-layer llama 32 wide) with SmolLM2's tokenizer."""
    import torch

    from vlmkit.config import ConnectorConfig, LMConfig, VisionConfig, VLMConfig
    from vlmkit.models.lm import LanguageModel, load_tokenizer
    from vlmkit.models.vlm import VisionLanguageModel

    torch.manual_seed(0)
    lm = dict(model_type="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              vocab_size=49152, max_position_embeddings=1024, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    cfg = VLMConfig(vision=VisionConfig(image_size=32, patch_size=8, hidden_size=24, num_layers=2, num_heads=2),
                    connector=ConnectorConfig(kind="mlp2x_gelu"), lm=LMConfig(source="tiny", weights="checkpoint", hf_config=lm), name="tiny")
    model = VisionLanguageModel(cfg, lm=LanguageModel(cfg.lm)).eval()
    model.save_pretrained(path, tokenizer=load_tokenizer(None, LMConfig(source="smollm2")))
    return path


def data_url(path: Path) -> str:
    mime = "image/jpeg" if path.suffix == ".jpg" else "image/png"
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()


def good_requests(n: int, max_tokens: int) -> list[dict]:
    images = [data_url(p) for p in sorted(EXAMPLES.glob("*.jpg"))]
    return [{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": images[i % len(images)]}},
                                                       {"type": "text", "text": QUESTIONS[i % len(QUESTIONS)]}]}],
             "max_tokens": max_tokens, "temperature": 0} for i in range(n)]


def malformed_requests() -> list[tuple[str, bytes]]:
    """(name, raw body): each must be refused with a 4xx without disturbing anyone else."""
    def body(parts):
        return json.dumps({"messages": [{"role": "user", "content": parts}], "max_tokens": 4}).encode()
    img = lambda url: {"type": "image_url", "image_url": {"url": url}}  # noqa: E731
    return [
        ("bad_base64", body([img("data:image/png;base64,@@@"), {"type": "text", "text": "x"}])),
        ("not_an_image", body([img("data:image/png;base64," + base64.b64encode(b"hello").decode()), {"type": "text", "text": "x"}])),
        ("broken_json", b'{"messages": [{"role": "user", "content": '),
        ("unknown_part", body([{"type": "audio", "audio": "x"}])),
        ("ssrf", body([img("http://127.0.0.1:22/"), {"type": "text", "text": "x"}])),
        ("too_many_images", body([img(data_url(EXAMPLES / "coffee.jpg"))] * 9 + [{"type": "text", "text": "x"}])),
    ]


def start_server(model: str, port: int, max_batch: int, max_queue: int, log_path: Path, threads: int):
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-c", "import sys; from vlmkit.cli import main; sys.exit(main())", "serve", "--model", model,
           "--host", "127.0.0.1", "--port", str(port), "--max-batch", str(max_batch), "--max-queue", str(max_queue), "--timeout", "600"]
    return subprocess.Popen(cmd, stdout=log_path.open("w"), stderr=subprocess.STDOUT, env=env)


async def wait_up(base: str, proc, timeout: float = 300) -> None:
    import httpx

    t0 = time.monotonic()
    async with httpx.AsyncClient() as c:
        while time.monotonic() - t0 < timeout:
            if proc.poll() is not None:
                raise SystemExit("the server exited while starting; see its log")
            try:
                if (await c.get(f"{base}/health")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.3)
    raise SystemExit("the server did not start in time")


async def run_level(base: str, bodies: list[bytes], concurrency: int, desc: str, noise: list[bytes] | None = None,
                    noise_clients: int = 2, noise_rps: float = 8.0) -> dict:
    """Send every body with `concurrency` clients; -> per-request (status, latency, tokens, text) and wall time.

    noise: bodies (malformed ones) that `noise_clients` extra clients keep sending, noise_rps in all, while the others run.
    """
    import httpx
    from tqdm import tqdm

    queue: asyncio.Queue = asyncio.Queue()
    for i, b in enumerate(bodies):
        queue.put_nowait((i, b))
    out: list = [None] * len(bodies)
    bar = tqdm(total=len(bodies), desc=desc, leave=False)

    async def client(http):
        while not queue.empty():
            i, b = queue.get_nowait()
            t0 = time.perf_counter()
            r = await http.post(f"{base}/v1/chat/completions", content=b, headers={"content-type": "application/json"})
            lat = time.perf_counter() - t0
            j = r.json()
            ok = r.status_code == 200
            out[i] = {"status": r.status_code, "latency": lat, "tokens": j["usage"]["completion_tokens"] if ok else 0,
                      "text": j["choices"][0]["message"]["content"] if ok else None}
            bar.update()

    noise_status: list[int] = []
    done = asyncio.Event()

    async def noisy(http, k):
        i = k
        while not done.is_set() and len(noise_status) < 50 * len(noise):  # bounded even if the good ones stall
            r = await http.post(f"{base}/v1/chat/completions", content=noise[i % len(noise)], headers={"content-type": "application/json"})
            noise_status.append(r.status_code)
            i += noise_clients
            await asyncio.sleep(noise_clients / noise_rps)

    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=concurrency + noise_clients + 4)) as http:
        noisy_tasks = [asyncio.create_task(noisy(http, k)) for k in range(noise_clients)] if noise else []
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
        done.set()
        await asyncio.gather(*noisy_tasks)
    bar.close()
    return {"results": out, "wall": wall, "load": (load0 + os.getloadavg()[0]) / 2, "noise_status": noise_status}


def summarise(level: dict, idx: list[int] | None = None) -> dict:
    rs = [level["results"][i] for i in (idx if idx is not None else range(len(level["results"])))]
    good = [r for r in rs if r["status"] == 200]
    lat = sorted(r["latency"] for r in good) or [float("nan")]
    q = lambda p: lat[min(len(lat) - 1, int(round(p * (len(lat) - 1))))]  # noqa: E731
    return {"n": len(rs), "errors": len(rs) - len(good), "p50": statistics.median(lat), "p99": q(0.99),
            "rps": len(good) / level["wall"], "tps": sum(r["tokens"] for r in good) / level["wall"], "wall": level["wall"], "load": level["load"]}


def batch_sizes(log_path: Path, since: int) -> tuple[float, int]:
    """Mean and max batch size of chat requests logged after line `since` (from the server's JSON access log)."""
    rows = [json.loads(x) for x in log_path.read_text().splitlines()[since:] if x.startswith("{")]
    sizes = [r["batch_size"] for r in rows if r.get("path") == "/v1/chat/completions" and r.get("status") == 200 and "batch_size" in r]
    return (statistics.mean(sizes) if sizes else 0.0), (max(sizes) if sizes else 0)


def log_lines(log_path: Path) -> int:
    return len(log_path.read_text().splitlines())


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = [r["concurrency"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(c, [r["tps"] for r in rows], "o-", label="batched server")
    a.axhline(rows[0]["tps"], color="grey", ls="--", label="one request at a time")
    a.set_xscale("log", base=2)
    a.set_xlabel("concurrent clients")
    a.set_ylabel("generated tokens / s")
    a.set_xticks(c, [str(x) for x in c])
    a.legend()
    a.set_title("throughput")
    b.plot(c, [r["p50"] for r in rows], "o-", label="p50")
    b.plot(c, [r["p99"] for r in rows], "s-", label="p99")
    b.set_xscale("log", base=2)
    b.set_xticks(c, [str(x) for x in c])
    b.set_xlabel("concurrent clients")
    b.set_ylabel("latency per request (s)")
    b.legend()
    b.set_title("latency")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


async def main_async(args) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="vlmkit-bench-serve-"))
    model = args.model or str(tiny_model_dir(tmp / "tiny"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    log_path = tmp / "server.log"
    proc = start_server(model, port, args.max_batch, args.max_queue, log_path, args.threads)
    t_start = time.monotonic()
    try:
        await wait_up(base, proc)
        bodies = [json.dumps(r).encode() for r in good_requests(args.requests, args.max_tokens)]
        await run_level(base, bodies[:4], 4, "warm-up")
        rows, skipped, clean = [], [], {}
        for c in args.concurrency:
            if time.monotonic() - t_start > args.time_limit:
                skipped.append(c)
                continue
            mark = log_lines(log_path)
            level = await run_level(base, bodies, c, f"{c} clients")
            clean[c] = level
            mean_b, max_b = batch_sizes(log_path, mark)
            rows.append({"concurrency": c, **summarise(level), "batch_mean": mean_b, "batch_max": max_b})
            print(f"{c:>3} clients: {rows[-1]['rps']:.2f} req/s, {rows[-1]['tps']:.1f} tok/s, p50 {rows[-1]['p50']:.2f} s, "
                  f"p99 {rows[-1]['p99']:.2f} s, errors {rows[-1]['errors']}, mean batch {mean_b:.1f}", flush=True)
        mixed = None
        mc = args.mixed_concurrency
        if mc in clean and time.monotonic() - t_start <= args.time_limit:
            bad = [b for _, b in malformed_requests()]
            level = await run_level(base, bodies, mc, f"{mc} clients + {args.noise_clients} sending malformed", bad, args.noise_clients, args.noise_rps)
            good = summarise(level)
            same = sum(a["text"] == b["text"] for a, b in zip(level["results"], clean[mc]["results"]))
            ns = level["noise_status"]
            mixed = {"good": good, "clean": summarise(clean[mc]), "n_bad": len(ns), "bad_statuses": sorted(set(ns)),
                     "bad_refused": sum(400 <= x < 500 for x in ns), "same_answers": same}
            print(f"mixed: {good['n']} good ({good['errors']} errors, {same} identical answers), {len(ns)} malformed -> {sorted(set(ns))}")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    write_results(args, rows, skipped, mixed, model)


def write_results(args, rows, skipped, mixed, model: str) -> None:
    base = rows[0]
    label = "tiny random VLM (ViT 24 wide, llama 2 layers x 32 wide, SmolLM2 tokenizer, vocab 49,152)" if not args.model else model
    cmd = "`.venv/bin/python bench/serve/run.py " + " ".join(sys.argv[1:]) + "`"
    lines = [
        "# Serving: dynamic batching under concurrent load",
        "",
        f"Command: {cmd}  ",
        f"Model: {label}. Server: `vlmkit serve --max-batch {args.max_batch} --max-queue {args.max_queue}`, {args.threads} torch threads, "
        f"its own process on 127.0.0.1; clients: asyncio + httpx in another process.  ",
        f"Each level sends the same {args.requests} requests (one of 3 example photos as a data: URL + a question, greedy, "
        f"max_tokens={args.max_tokens}). The 1-client row is the same requests sent one at a time: the reference for the gain.  ",
        f"Machine: {os.cpu_count()} cores shared with other jobs; `load` is the 1-minute load average during the level, so compare rows with it in mind.",
        "",
        "| clients | requests/s | tokens/s | gain vs one at a time | p50 latency (s) | p99 latency (s) | errors | mean / max batch | load |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['concurrency']} | {r['rps']:.2f} | {r['tps']:.1f} | {r['tps'] / base['tps']:.2f}x | {r['p50']:.3f} | {r['p99']:.3f} | "
                     f"{r['errors']} / {r['n']} | {r['batch_mean']:.1f} / {r['batch_max']} | {r['load']:.1f} |")
    if skipped:
        lines.append(f"\nSkipped (time limit of {args.time_limit:g} s reached): {skipped} clients.")
    if mixed:
        g, c = mixed["good"], mixed["clean"]
        lines += [
            "",
            f"## Malformed requests mixed in ({args.mixed_concurrency} good clients + {args.noise_clients} sending malformed requests)",
            "",
            f"While {args.mixed_concurrency} clients sent the same {g['n']} good requests as above, {args.noise_clients} more clients kept sending "
            f"malformed ones at about {args.noise_rps:g} requests/s in all (bad base64, not an image, broken JSON, unknown content part, "
            f"an SSRF URL, too many images): {mixed['bad_refused']} of {mixed['n_bad']} refused with {mixed['bad_statuses']}.",
            "",
            "| good requests | errors | identical answers | p50 latency (s) | p99 latency (s) | tokens/s |",
            "|---|---|---|---|---|---|",
            f"| clean run | {c['errors']} / {c['n']} | - | {c['p50']:.3f} | {c['p99']:.3f} | {c['tps']:.1f} |",
            f"| with malformed mixed in | {g['errors']} / {g['n']} | {mixed['same_answers']} / {g['n']} | {g['p50']:.3f} | {g['p99']:.3f} | {g['tps']:.1f} |",
        ]
    if not args.model:
        lines += ["", "The tiny model's step cost is mostly its 49,152-word output projection, which grows with the batch, so batching "
                      "amortises less here than for a real, memory-bound model (see smollm2/results.md for the default model)."]
    lines += ["", "![throughput and latency](results.png)", ""]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text("\n".join(lines))
    short = "tiny random VLM" if not args.model else Path(model).name
    plot(rows, out / "results.png", f"vlmkit serve ({short}), {args.requests} requests per level, max_tokens={args.max_tokens}")
    (out / "results.json").write_text(json.dumps({"args": vars(args), "levels": rows, "mixed": mixed}, indent=1))
    print("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model directory (default: a tiny random model built in a temp dir)")
    p.add_argument("--requests", type=int, default=64, help="requests per level")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    p.add_argument("--mixed-concurrency", type=int, default=16)
    p.add_argument("--noise-clients", type=int, default=2, help="clients sending malformed requests in the mixed run")
    p.add_argument("--noise-rps", type=float, default=8.0, help="malformed requests per second, all noise clients together")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--max-queue", type=int, default=64, help="the queue bound; below it there must be no errors")
    p.add_argument("--threads", type=int, default=2, help="torch threads in the server")
    p.add_argument("--time-limit", type=float, default=540.0, help="seconds; levels after it are skipped")
    p.add_argument("--out", default=str(HERE))
    args = p.parse_args()
    if args.concurrency[0] != 1:
        raise SystemExit("the first level must be 1 client: it is the reference for the batching gain")
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
