"""The frames TextSynch reads: a span cut into chunks of whole segments, decoded ahead on a thread.

TextSynch looks at each 16-frame segment on its own, and segments start every
8 frames, so a chunk of n segments is (n - 1) * 8 + 16 frames from its first
segment's frame, consecutive chunks share 8 frames, and the chunks' features
side by side are the features of the whole span. Memory then grows with the
chunk, not the clip: a 10 minute clip is 2.2 GB of 224 px frames, a chunk of 8
segments 11 MB.

One decoder pass feeds every chunk (no seek per chunk: with a 10 s keyframe
interval each seek would decode up to 250 frames again). It runs on a worker
thread one chunk ahead of its consumer, so decoding and resizing (PyAV and
torch let go of the GIL there) overlap the text encoders and TextSynch.

    with FrameFeed(info, start=0.0, lengths=lengths, chunk_segments=8) as feed:
        for first_segment, frames in feed:  # frames: uint8 (T, 3, 224, 224)
            ...
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Iterator

import torch

from selva import media
from selva.sequence import SEGMENT_FRAMES, SEGMENT_STRIDE, SYNC_FPS, SYNC_SIZE, SequenceLengths

# How often a blocked worker looks whether its consumer has gone.
_POLL_SECONDS = 0.1


class FrameFeed:
    """(first segment, uint8 frames (T, 3, 224, 224)) per chunk of a span, decoded one chunk ahead.

    A context manager: leaving it, also early or on an error, stops the worker. Decoding
    errors (a damaged file) are raised by the iteration, where the frames were wanted.
    `pin_memory=True` hands out page-locked frames, which copy to a GPU asynchronously;
    `device` instead squashes the decoded pictures on that device (`media.iter_frames`), so the
    chunks are already there. `decode_seconds` is the worker's time spent decoding and resizing
    so far (with a `device`, the time to queue the resize, not the device's time to run it).
    """

    def __init__(
        self,
        info: media.VideoInfo,
        *,
        start: float,
        lengths: SequenceLengths,
        chunk_segments: int,
        pin_memory: bool = False,
        device: torch.device | None = None,
    ) -> None:
        if chunk_segments < 1:
            raise ValueError(f"chunks hold at least one segment, not {chunk_segments}")
        self.segments = lengths.sync_segments
        self.chunk_segments = chunk_segments
        self.decode_seconds = 0.0
        frames = (self.segments - 1) * SEGMENT_STRIDE + SEGMENT_FRAMES  # the frames the segments cover
        # Bad spans raise here, in the caller's thread, before the worker starts.
        self._blocks = media.iter_frames(
            info.path,
            info=info,
            start=start,
            duration=frames / SYNC_FPS,
            fps=SYNC_FPS,
            size=SYNC_SIZE,
            block=chunk_segments * SEGMENT_STRIDE,
            device=device,
        )
        self._device = device
        self._pin = pin_memory and device is None
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._run, name="selva-frame-feed", daemon=True)
        self._worker.start()

    def __enter__(self) -> FrameFeed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[tuple[int, torch.Tensor]]:
        for _ in range(0, self.segments, self.chunk_segments):
            item = self._queue.get()
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        """Stop the worker (after the block it is decoding) and free what it holds."""
        self._stop.set()
        while self._worker.is_alive():
            with contextlib.suppress(queue.Empty):  # a taken chunk unblocks a worker waiting to hand one over
                self._queue.get(timeout=_POLL_SECONDS)
        self._blocks.close()

    def _run(self) -> None:
        try:
            for item in self._chunks():
                if not self._hand_over(item):
                    return
        except BaseException as e:  # noqa: BLE001 - raised again in the consumer's thread
            self._hand_over(e)

    def _chunks(self) -> Iterator[tuple[int, torch.Tensor]]:
        held = torch.empty((0, 3, SYNC_SIZE, SYNC_SIZE), dtype=torch.uint8, device=self._device)
        for first in range(0, self.segments, self.chunk_segments):
            count = min(self.chunk_segments, self.segments - first)
            need = (count - 1) * SEGMENT_STRIDE + SEGMENT_FRAMES
            begun = time.perf_counter()
            while len(held) < need:
                held = torch.cat([held, next(self._blocks)])
            chunk = held[:need].pin_memory() if self._pin else held[:need]
            self.decode_seconds += time.perf_counter() - begun
            if self._stop.is_set():
                return
            yield first, chunk
            held = held[count * SEGMENT_STRIDE :]  # the next chunk starts with these 8 frames

    def _hand_over(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_SECONDS)
                return True
            except queue.Full:
                pass
        return False
