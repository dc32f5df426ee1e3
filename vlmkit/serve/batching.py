"""Dynamic batching: concurrent requests share one forward pass per decoding step.

One worker thread owns the model. It takes the oldest waiting request, waits a
short window (window_ms) for more, up to max_batch, and runs them as one
left-padded `VLM.generate_prompts` call. Each row keeps its own settings
(temperature, top-p, seed, max_tokens, JSON schema) through its RowSampler, and
its own stop strings here, so requests need not match to share a batch. Text
streams back per row through on_text, into the request's asyncio queue.

Back-pressure: at most max_queue requests wait; the next one gets 429 with a
Retry-After estimated from recent batch times. A request past its deadline is
dropped before it runs, or ended at the next step if it is running.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import math
import threading
import time
from dataclasses import dataclass, field

from ..constrained import RowSampler, batch_processor
from ..generation import GenerationConfig, GenerationResult
from ..processing.chat import Prompt
from .limits import ApiError

log = logging.getLogger("vlmkit.serve")


@dataclass
class BatchConfig:
    max_batch: int = 8
    window_ms: float = 10.0  # how long the first request of a batch waits for company
    max_queue: int = 64  # requests waiting (not yet running) before 429
    timeout_s: float = 120.0  # a request's deadline, from arrival to its last token

    def __post_init__(self):
        if self.max_batch < 1 or self.max_queue < 1:
            raise ValueError("max_batch and max_queue must be at least 1")
        if self.window_ms < 0 or self.timeout_s <= 0:
            raise ValueError("window_ms must be >= 0 and timeout_s > 0")


class FeatureCache:
    """A thread-safe LRU of image features ([N_visual, D_lm]) keyed by content hash (VLM.feature_cache)."""

    def __init__(self, max_items: int = 256):
        self.max_items = max_items
        self._d: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key):
        with self._lock:
            if key in self._d:
                self._d.move_to_end(key)
                self.hits += 1
                return self._d[key]
            self.misses += 1
            return None

    def put(self, key, value) -> None:
        with self._lock:
            self._d[key] = value
            self._d.move_to_end(key)
            while len(self._d) > self.max_items:
                self._d.popitem(last=False)

    def stats(self) -> dict:
        with self._lock:
            return {"items": len(self._d), "hits": self.hits, "misses": self.misses}


@dataclass
class Job:
    """One request's row: its prompt and sampler in, its text out as events on an asyncio queue.

    Events: ("start", info) when its batch begins, ("delta", text) as text becomes final,
    then ("done", info) or ("error", ApiError).
    """

    prompt: Prompt
    sampler: RowSampler
    max_tokens: int
    stop: tuple[str, ...]
    loop: asyncio.AbstractEventLoop
    deadline: float  # time.monotonic()
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    created: float = field(default_factory=time.monotonic)
    cancelled: bool = False
    # worker side
    text: str = ""
    emitted: int = 0
    stop_hit: str | None = None
    batch_size: int = 0
    queue_s: float = 0.0

    def cancel(self) -> None:
        """From any thread: the row ends at the next step (or never starts)."""
        self.cancelled = True
        self.sampler.stop_requested = True

    def _send(self, *event) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop is gone (server stopped): nobody is listening
            pass

    def started(self, batch_size: int, now: float) -> None:
        self.batch_size, self.queue_s = batch_size, now - self.created
        self._send("start", {"batch_size": batch_size, "queue_ms": round(self.queue_s * 1000, 1)})

    def on_delta(self, delta: str) -> None:
        if self.stop_hit is not None:
            return
        self.text += delta
        hits = [(self.text.find(s), s) for s in self.stop if s in self.text]
        if hits:
            k, s = min(hits)
            self.text, self.stop_hit = self.text[:k], s
            self.sampler.stop_requested = True  # no need to decode further
            self._emit(len(self.text))
            return
        self._emit(len(self.text) - self._holdback())

    def _holdback(self) -> int:
        """Chars at the end that could still become a stop string: not sent until that is settled."""
        for n in range(min(len(self.text), max((len(s) for s in self.stop), default=1) - 1), 0, -1):
            if any(s.startswith(self.text[-n:]) for s in self.stop):
                return n
        return 0

    def _emit(self, upto: int) -> None:
        if upto > self.emitted:
            self._send("delta", self.text[self.emitted:upto])
            self.emitted = upto

    def finish(self, result: GenerationResult, run_s: float) -> None:
        self._emit(len(self.text))
        if self.stop_hit is not None:
            reason = "stop"
        elif self.sampler.finish_reason == "length":
            reason = "length"
        else:
            reason = result.finish_reason
        self._send("done", {"finish_reason": reason, "stop_sequence": self.stop_hit, "completion_tokens": len(result.token_ids),
                            "batch_size": self.batch_size, "queue_ms": round(self.queue_s * 1000, 1), "run_ms": round(run_s * 1000, 1)})

    def fail(self, error: ApiError) -> None:
        self._send("error", error)


class Batcher:
    def __init__(self, vlm, cfg: BatchConfig | None = None):
        self.vlm, self.cfg = vlm, cfg or BatchConfig()
        self._queue: collections.deque[Job] = collections.deque()
        self._cv = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._batch_s = 1.0  # moving average of batch wall time, for Retry-After
        self.stats = {"batches": 0, "rows": 0, "max_batch_seen": 0, "rejected": 0, "timed_out": 0, "running": 0}

    # ---- the request side (event loop thread) ----
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="vlmkit-batcher", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        with self._cv:
            if self._stopping:
                raise ApiError(503, "the server is shutting down", "shutting_down")
            if len(self._queue) >= self.cfg.max_queue:
                self.stats["rejected"] += 1
                wait = max(1, math.ceil(self._batch_s * (len(self._queue) / self.cfg.max_batch + 1)))
                raise ApiError(429, f"the server is busy ({len(self._queue)} requests waiting); retry in {wait} s",
                               "queue_full", headers={"Retry-After": str(wait)})
            self._queue.append(job)
            self._cv.notify()

    @property
    def queued(self) -> int:
        return len(self._queue)

    def stop(self, timeout: float | None = None) -> None:
        """Finish everything queued and running, then end the worker."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    # ---- the worker thread ----
    def _take(self) -> list[Job]:
        with self._cv:
            while not self._queue and not self._stopping:
                self._cv.wait()
            if not self._queue:
                return []
            batch = [self._queue.popleft()]
            end = time.monotonic() + self.cfg.window_ms / 1000
            while len(batch) < self.cfg.max_batch:
                if self._queue:
                    batch.append(self._queue.popleft())
                    continue
                left = end - time.monotonic()
                if left <= 0 or self._stopping:
                    break
                self._cv.wait(left)
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if not batch:
                return
            now = time.monotonic()
            live = []
            for job in batch:
                if job.cancelled:
                    continue
                if now > job.deadline:
                    self.stats["timed_out"] += 1
                    job.fail(ApiError(504, "the request waited in the queue past its deadline", "timeout"))
                    continue
                live.append(job)
            if live:
                try:
                    self._run(live, now)
                except Exception:  # never let the worker die: every later request would time out
                    log.exception("batch worker error")
                    for job in live:
                        job.fail(ApiError(500, "internal error in the batch worker", "internal_error"))

    def _run(self, jobs: list[Job], t0: float) -> None:
        for job in jobs:
            job.started(len(jobs), t0)
        self.stats["running"] = len(jobs)
        config = GenerationConfig(max_new_tokens=max(j.max_tokens for j in jobs), temperature=0.0)  # rows sample for themselves
        try:
            results = self.vlm.generate_prompts([j.prompt for j in jobs], config, on_text=lambda row, d: jobs[row].on_delta(d),
                                                logits_processor=batch_processor([j.sampler for j in jobs]))
        except Exception as e:  # keep serving: this batch fails, the next one runs
            log.exception("generation failed for a batch of %d", len(jobs))
            for job in jobs:
                job.fail(ApiError(500, f"generation failed: {type(e).__name__}: {e}", "generation_failed"))
            return
        finally:
            self.stats["running"] = 0
        dt = time.monotonic() - t0
        self._batch_s = 0.8 * self._batch_s + 0.2 * dt
        self.stats["batches"] += 1
        self.stats["rows"] += len(jobs)
        self.stats["max_batch_seen"] = max(self.stats["max_batch_seen"], len(jobs))
        for job, result in zip(jobs, results):
            job.finish(result, dt)
