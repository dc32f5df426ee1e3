"""Video -> timestamped frames, decoded with PyAV (`pip install av`: its wheels bundle FFmpeg's codecs).

Frames are sampled either as a fixed count (the middle of N equal segments, so a fade-in
at t=0 is not what the model sees) or at a rate in frames per second; the count is then
capped, e.g. by what the token budget allows. Each frame enters the prompt with its time:
    "Frame 3 at 4.5s: <image>"
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from PIL import Image

from ..errors import VlmkitError


class VideoError(VlmkitError):
    """A file is missing, is not a decodable video, or the sampling request is impossible."""


@dataclass
class VideoInfo:
    duration: float  # seconds
    fps: float
    width: int
    height: int
    frames: int  # as the container reports it (0 when unknown)


@dataclass
class Frame:
    time: float  # seconds from the start of the stream
    image: Image.Image


def _open(path):
    try:
        import av
    except ImportError:
        raise VideoError("video input needs PyAV: pip install av") from None
    p = Path(path)
    if not p.is_file():
        raise VideoError(f"{p}: no such file")
    try:
        container = av.open(str(p))
    except (av.error.FFmpegError, UnicodeDecodeError) as e:
        raise VideoError(f"{p}: not a readable video ({type(e).__name__})") from None
    if not container.streams.video:
        container.close()
        raise VideoError(f"{p}: has no video stream")
    return container


def _info(container) -> VideoInfo:
    s = container.streams.video[0]
    fps = float(s.average_rate or s.guessed_rate or 0) or 25.0
    if s.duration is not None and s.time_base is not None:
        duration = float(s.duration * s.time_base)
    elif container.duration is not None:
        duration = container.duration / 1_000_000  # av.time_base
    else:
        duration = (s.frames or 0) / fps
    return VideoInfo(duration, fps, s.codec_context.width, s.codec_context.height, int(s.frames or 0))


def probe(path: str | os.PathLike) -> VideoInfo:
    with _open(path) as c:
        return _info(c)


def sample_times(duration: float, num_frames: int | None = None, fps: float | None = None, max_frames: int | None = None) -> list[float]:
    """Timestamps to show: N segment midpoints, or one every 1/fps s; at most max_frames, spread evenly."""
    if (num_frames is None) == (fps is None):
        raise VideoError("sample a video by num_frames or by fps (one of them)")
    if duration <= 0:
        raise VideoError("video has no duration")
    if max_frames is not None and max_frames < 1:
        raise VideoError("no frame fits the token budget")
    if num_frames is not None:
        if num_frames < 1:
            raise VideoError("num_frames must be at least 1")
        n = min(num_frames, max_frames or num_frames)
        return [(i + 0.5) * duration / n for i in range(n)]
    if fps <= 0:
        raise VideoError("fps must be positive")
    times = [i / fps for i in range(max(1, math.ceil(duration * fps - 1e-9)))]
    if max_frames is not None and len(times) > max_frames:  # keep the whole span, lower the rate
        if max_frames == 1:
            return [times[len(times) // 2]]
        times = [times[round(i * (len(times) - 1) / (max_frames - 1))] for i in range(max_frames)]
    return times


def _fit(frame, max_side: int | None) -> Image.Image:
    w, h = frame.width, frame.height
    if max_side and max(w, h) > max_side:
        s = max_side / max(w, h)
        return frame.to_image(width=max(1, round(w * s)), height=max(1, round(h * s)))  # scaled by swscale, at decode
    return frame.to_image()


def sample_frames(
    path: str | os.PathLike,
    num_frames: int | None = None,
    fps: float | None = None,
    max_frames: int | None = None,
    max_side: int | None = None,
    seek: bool | None = None,
) -> list[Frame]:
    """Decode the frames shown at the sampled times (the last frame with pts <= t).

    seek: jump to the keyframe before each time instead of decoding everything in between;
    by default only when samples are more than 2 s apart (long videos).
    """
    with _open(path) as c:
        info = _info(c)
        times = sample_times(info.duration, num_frames, fps, max_frames)
        stream = c.streams.video[0]
        stream.thread_type = "AUTO"
        if seek is None:
            seek = len(times) > 1 and (times[-1] - times[0]) / (len(times) - 1) > 2.0
        try:
            frames = _decode_seeking(c, stream, times, max_side) if seek else _decode_linear(c, stream, times, max_side)
        except Exception as e:  # av.error.* on corrupt streams
            if isinstance(e, VlmkitError):
                raise
            raise VideoError(f"{path}: decoding failed ({type(e).__name__}: {e})") from None
    if not frames:
        raise VideoError(f"{path}: no frames could be decoded")
    return frames


def _decode_linear(c, stream, times: list[float], max_side) -> list[Frame]:
    out: list[Frame] = []
    prev, k = None, 0
    for frame in c.decode(stream):
        t = float(frame.time if frame.time is not None else 0.0)
        while k < len(times) and t > times[k] + 1e-9 and prev is not None:
            out.append(Frame(times[k], _fit(prev, max_side)))
            k += 1
        if k == len(times):
            break
        prev = frame
    while k < len(times) and prev is not None:  # times past the last frame show the last frame
        out.append(Frame(times[k], _fit(prev, max_side)))
        k += 1
    return out


def _decode_seeking(c, stream, times: list[float], max_side) -> list[Frame]:
    out: list[Frame] = []
    for target in times:
        c.seek(int(target / stream.time_base), stream=stream, backward=True, any_frame=False)
        prev = None
        for frame in c.decode(stream):
            t = float(frame.time if frame.time is not None else 0.0)
            if t > target + 1e-9 and prev is not None:
                break
            prev = frame
        if prev is not None:
            out.append(Frame(target, _fit(prev, max_side)))
    return out


def frame_label(index: int, time: float) -> str:
    return f"Frame {index + 1} at {time:.1f}s:"


def video_parts(frames: list[Frame]) -> list[dict]:
    """Content parts for chat.flatten_messages: each frame an image part carrying its timestamp label."""
    return [{"type": "image", "image": f.image, "label": frame_label(i, f.time)} for i, f in enumerate(frames)]


def max_frames_for_budget(budget_tokens: int, tokens_per_frame: int, label_tokens: int = 10) -> int:
    """How many frames (visual tokens plus their timestamp text) fit in budget_tokens."""
    return max(0, budget_tokens // (tokens_per_frame + label_tokens))


def is_video_part(part) -> bool:
    return isinstance(part, dict) and part.get("type") == "video"


def has_video_parts(message) -> bool:
    content = message.get("content") if isinstance(message, dict) else None
    return isinstance(content, list) and any(is_video_part(p) for p in content)


def expand_video_parts(messages: list[dict], frames_for: Callable[[dict], list[Frame]]) -> list[dict]:
    """Replace {"type": "video", "video": PATH, "num_frames": N | "fps": R} parts by timestamped frames.

    frames_for(part) -> list[Frame] does the sampling (the caller knows the budget and the tile size).
    """
    out = []
    for m in messages:
        if not has_video_parts(m):
            out.append(m)
            continue
        parts = []
        for p in m["content"]:
            if is_video_part(p):
                parts += video_parts(frames_for(p))
            else:
                parts.append(p)
        out.append({**m, "content": parts})
    return out
