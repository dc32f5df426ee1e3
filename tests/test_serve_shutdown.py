"""`vlmkit serve` as a real process: loads a model directory, logs JSON lines, and drains on SIGTERM."""
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from vlmkit.cli import main


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigterm_finishes_in_flight_requests_then_exits(model_dir):
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from vlmkit.cli import main; sys.exit(main())", "serve",
                             "--model", str(model_dir), "--port", str(port), "--name", "tiny"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        t0 = time.monotonic()
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() - t0 < 120, "server did not come up"
            time.sleep(0.2)

        lines, first = [], threading.Event()

        def stream():
            body = {"messages": [{"role": "user", "content": "Talk for a while."}], "max_tokens": 200, "stream": True,
                    "stream_options": {"include_usage": True}}
            with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=120) as r:
                for line in r.iter_lines():
                    if line:
                        lines.append(line)
                        first.set()

        client = threading.Thread(target=stream)
        client.start()
        assert first.wait(60)
        proc.send_signal(signal.SIGTERM)
        refused = False
        t0 = time.monotonic()
        while client.is_alive() and time.monotonic() - t0 < 30:  # new connections are refused while the stream drains
            try:
                httpx.get(f"{base}/health", timeout=1)
            except httpx.TransportError:
                refused = True
                break
            time.sleep(0.05)
        client.join(120)
        # uvicorn re-raises SIGTERM once drained, so the exit reads as "ended by SIGTERM" (what init systems expect)
        assert proc.wait(60) in (0, -signal.SIGTERM)
        assert refused
    finally:
        if proc.poll() is None:
            proc.kill()
    assert lines[-1] == "data: [DONE]"
    usage = json.loads(lines[-2][6:])["usage"]
    assert usage["completion_tokens"] == 200  # the in-flight request ran to its end
    access = [json.loads(line) for line in proc.stdout.read().splitlines() if line.startswith("{")]
    chat = [a for a in access if a["path"] == "/v1/chat/completions"]
    assert chat and chat[-1]["status"] == 200 and chat[-1]["completion_tokens"] == 200 and chat[-1]["latency_ms"] > 0


@pytest.mark.parametrize("argv,pattern", [
    (["serve", "--model", "/no/such/model"], "model directory not found"),
    (["serve", "--allow-local-files", "/no/such/dir"], "not a directory"),
    (["serve", "--max-batch", "0"], "max_batch"),
])
def test_serve_bad_arguments_are_one_line_errors(argv, pattern, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert pattern in err and len(err.splitlines()) == 1
