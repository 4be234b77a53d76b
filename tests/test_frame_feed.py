"""Frames for TextSynch in chunks: one decoder pass in blocks, a worker thread ahead of TextSynch."""

import threading

import pytest
import torch
from media_factory import make_video

from selva import media
from selva.frame_feed import FrameFeed
from selva.sequence import SEGMENT_FRAMES, SEGMENT_STRIDE, SequenceLengths
from selva.spec import MediaError


@pytest.mark.parametrize(
    ("fps", "start", "skip", "block"),
    [(25, 0.0, 0, 7), (12, 0.37, 0, 8), (30, 1.13, 5, 1), (25, 0.0, 0, 1000), (10, 0.5, 3, 16)],
)
def test_blocks_put_together_are_the_frames_of_one_read(tmp_path, fps, start, skip, block):
    # A 10 or 12 fps source shows each picture for several output frames, some across a block edge.
    clip = make_video(tmp_path / "c.mp4", seconds=3.0, fps=fps, size=(64, 48), marker=True)
    info = media.probe(clip)
    whole = media.read_frames(clip, start=start, duration=1.6, info=info, skip=skip)
    blocks = list(media.iter_frames(clip, start=start, duration=1.6, info=info, skip=skip, block=block))
    assert all(len(b) == block for b in blocks[:-1]) and 1 <= len(blocks[-1]) <= block
    assert torch.equal(torch.cat(blocks), whole)


def test_bad_spans_raise_before_anything_is_decoded(tmp_path):
    clip = make_video(tmp_path / "c.mp4", seconds=1.0)
    with pytest.raises(MediaError, match="no picture at"):
        media.iter_frames(clip, start=0.5, duration=1.0, block=8)
    with pytest.raises(MediaError, match="blocks of at least 1"):
        media.iter_frames(clip, duration=0.5, block=0)


def _lengths(seconds: float) -> SequenceLengths:
    return SequenceLengths.from_duration(seconds, sample_rate=16000, hop_length=256)


@pytest.mark.parametrize("chunk_segments", [1, 2, 5, 100])
def test_chunks_are_whole_segments_sharing_their_overlap(tmp_path, chunk_segments):
    clip = make_video(tmp_path / "c.mp4", seconds=3.0, marker=True)
    lengths = _lengths(3.0)  # 75 frames: 8 segments cover the first 72
    one_read = media.read_frames(clip, duration=3.0)
    with FrameFeed(media.probe(clip), start=0.0, lengths=lengths, chunk_segments=chunk_segments) as feed:
        chunks = list(feed)
    firsts = [first for first, _ in chunks]
    assert firsts == list(range(0, lengths.sync_segments, chunk_segments))
    for first, frames in chunks:
        count = min(chunk_segments, lengths.sync_segments - first)
        frame0 = first * SEGMENT_STRIDE
        assert len(frames) == (count - 1) * SEGMENT_STRIDE + SEGMENT_FRAMES
        assert torch.equal(frames, one_read[frame0 : frame0 + len(frames)])
    assert feed.decode_seconds > 0


def test_a_decoding_error_raises_in_the_consumer_and_the_worker_ends(tmp_path):
    clip = make_video(tmp_path / "c.mp4", seconds=4.0)
    info = media.probe(clip)
    clip.write_bytes(b"\0" * 4096)  # replaced after the probe: the worker's decoder cannot open it
    feed = FrameFeed(info, start=0.0, lengths=_lengths(3.5), chunk_segments=2)
    with pytest.raises(MediaError), feed:
        list(feed)
    assert not feed._worker.is_alive()


def test_leaving_early_stops_the_worker(tmp_path):
    clip = make_video(tmp_path / "c.mp4", seconds=6.0)
    before = threading.active_count()
    with FrameFeed(media.probe(clip), start=0.0, lengths=_lengths(6.0), chunk_segments=1) as feed:
        first, frames = next(iter(feed))
        assert first == 0 and len(frames) == SEGMENT_FRAMES
    assert not feed._worker.is_alive() and threading.active_count() == before
