"""Video frames with PyAV, on a clip the test writes itself: frame i is grey level 8 * i."""
import numpy as np
import pytest

from tiny import tiny_vlm
from vlmkit.processing.video import VideoError, probe, sample_frames, sample_times

av = pytest.importorskip("av")
FPS, N_FRAMES = 10, 30


def _write_clip(path, static=False):
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=FPS)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for i in range(N_FRAMES):
            arr = np.full((48, 64, 3), 100 if static else i * 8, dtype=np.uint8)
            for packet in s.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return _write_clip(tmp_path_factory.mktemp("video") / "ramp.mp4")


def _level(frame):
    return float(np.asarray(frame.image).mean())


def test_probe(clip):
    info = probe(clip)
    assert (info.duration, info.fps, info.width, info.height) == (3.0, 10.0, 64, 48)


@pytest.mark.parametrize("seek", [False, True])
def test_fixed_count_takes_segment_midpoints(clip, seek):
    frames = sample_frames(clip, num_frames=4, seek=seek)
    assert [f.time for f in frames] == [0.375, 1.125, 1.875, 2.625]
    shown = [int(f.time * FPS) for f in frames]  # the frame on screen at each time: 3, 11, 18, 26
    assert all(abs(_level(f) - 8 * i) <= 3 for f, i in zip(frames, shown)), [_level(f) for f in frames]


def test_rate_and_cap(clip):
    frames = sample_frames(clip, fps=2)
    assert [f.time for f in frames] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    assert all(abs(_level(f) - 8 * round(f.time * FPS)) <= 3 for f in frames)
    capped = sample_frames(clip, fps=2, max_frames=3, max_side=32)
    assert [f.time for f in capped] == [0.0, 1.0, 2.5]  # the span is kept, the rate thinned
    assert capped[0].image.size == (32, 24)


def test_sampling_errors(tmp_path):
    with pytest.raises(VideoError, match="one of them"):
        sample_times(3.0)
    with pytest.raises(VideoError, match="token budget"):
        sample_times(3.0, num_frames=4, max_frames=0)
    with pytest.raises(VideoError, match="no such file"):
        sample_frames(tmp_path / "missing.mp4", num_frames=2)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 10)
    with pytest.raises(VideoError, match="not a readable video"):
        sample_frames(bad, num_frames=2)


def _video_conv(path, **kw):
    return [{"role": "user", "content": [{"type": "video", "video": str(path), **kw}, {"type": "text", "text": "What happens?"}]}]


def test_frames_in_the_prompt_with_timestamps(clip):
    vlm = tiny_vlm()
    p = vlm.prompt(_video_conv(clip, num_frames=4))
    text = vlm.tokenizer.decode([i for i in p.input_ids if i >= 0])
    stamps = ["Frame 1 at 0.4s:", "Frame 2 at 1.1s:", "Frame 3 at 1.9s:", "Frame 4 at 2.6s:"]
    assert all(s in text for s in stamps) and [text.index(s) for s in stamps] == sorted(text.index(s) for s in stamps)
    assert p.input_ids.count(vlm.cfg.image_token_id) == 4 * 16
    assert len(vlm.generate([_video_conv(clip, num_frames=4)], max_new_tokens=3)[0].token_ids) == 3


def test_frame_count_capped_by_the_token_budget(clip):
    vlm = tiny_vlm()
    vlm.cfg.lm.max_position_embeddings = 400  # room for (400 - 256) // (16 + 10) = 5 frames
    p = vlm.prompt(_video_conv(clip, fps=10))  # 30 frames asked for
    assert p.input_ids.count(vlm.cfg.image_token_id) == 5 * 16


def test_static_video_merges_across_frames(tmp_path):
    vlm = tiny_vlm()
    path = _write_clip(tmp_path / "static.mp4", static=True)
    p = vlm.prompt(_video_conv(path, num_frames=4), merge_threshold=0.99)
    # every frame repeats the first: only the first frame's 16 tokens are kept
    assert p.input_ids.count(vlm.cfg.image_token_id) == 16
    assert len(vlm.generate([_video_conv(path, num_frames=4)], max_new_tokens=2, merge_threshold=0.99)[0].token_ids) == 2
    assert (vlm.last_compression.before, vlm.last_compression.saved) == (4 * 16, 3 * 16)
