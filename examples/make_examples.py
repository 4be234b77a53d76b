"""Draw the example clips offered in the app (silent h264 mp4s, made here, free to redistribute).

    python examples/make_examples.py        # rewrites examples/*.mp4 next to this file

Each clip is a few seconds of simple shapes whose motion has an obvious sound,
drawn with numpy and encoded with PyAV, so the repository ships no third-party
footage. `dog_and_car.mp4` holds two sources moving to different rhythms: it is
the one that shows selection (prompt one source, steer away from the other).
The matching prompts are in `examples.csv` (the columns `selva batch` reads).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

HERE = Path(__file__).resolve().parent
WIDTH, HEIGHT = 320, 240  # small: the model sees 224 px squares anyway
FPS = 25
SECONDS = 5.0

Canvas = np.ndarray  # (H, W, 3) float32 in [0, 1]
_YY, _XX = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)


# -- drawing: anti-aliased shapes from distance fields --------------------------------------------


def _paint(img: Canvas, distance: np.ndarray, color: tuple[float, float, float]) -> None:
    """Fill where `distance` (pixels, negative inside) is below zero, with a one-pixel soft edge."""
    alpha = np.clip(0.5 - distance, 0.0, 1.0)[..., None]
    img *= 1.0 - alpha
    img += alpha * np.asarray(color, np.float32)


def disc(img: Canvas, cx: float, cy: float, r: float, color: tuple[float, float, float]) -> None:
    _paint(img, np.hypot(_XX - cx, _YY - cy) - r, color)


def ellipse(
    img: Canvas, cx: float, cy: float, rx: float, ry: float, color: tuple[float, float, float]
) -> None:
    # Scaled radial distance: exact enough for soft edges on small ellipses.
    d = np.hypot((_XX - cx) / rx, (_YY - cy) / ry)
    _paint(img, (d - 1.0) * min(rx, ry), color)


def box(img: Canvas, x0: float, y0: float, x1: float, y1: float, color: tuple[float, float, float]) -> None:
    dx = np.maximum(x0 - _XX, _XX - x1)
    dy = np.maximum(y0 - _YY, _YY - y1)
    _paint(img, np.maximum(dx, dy), color)


def stick(
    img: Canvas, x0: float, y0: float, x1: float, y1: float, width: float, color: tuple[float, float, float]
) -> None:
    """A line segment with round caps (pendulum rods, drumsticks, legs)."""
    vx, vy = x1 - x0, y1 - y0
    t = np.clip(((_XX - x0) * vx + (_YY - y0) * vy) / max(vx * vx + vy * vy, 1e-6), 0.0, 1.0)
    _paint(img, np.hypot(_XX - (x0 + t * vx), _YY - (y0 + t * vy)) - width / 2, color)


def backdrop(top: tuple[float, float, float], bottom: tuple[float, float, float], horizon: float) -> Canvas:
    """A vertical gradient above `horizon` (a fraction of the height) and a flat floor below."""
    img = np.empty((HEIGHT, WIDTH, 3), np.float32)
    y = np.linspace(0.0, 1.0, HEIGHT, dtype=np.float32)[:, None]
    img[:] = (np.asarray(top) * (1 - y) + np.asarray(bottom) * y)[:, None, :]
    floor = int(horizon * HEIGHT)
    img[floor:] = np.asarray(bottom, np.float32) * 0.8
    return img


# -- the scenes: frame(t) -> canvas ---------------------------------------------------------------


def bouncing_ball(t: float) -> Canvas:
    """A ball dropped from rest, losing energy at each bounce, rolling slowly to the right."""
    img = backdrop((0.86, 0.9, 0.96), (0.62, 0.45, 0.3), horizon=0.8)
    floor, r, g = 0.8 * HEIGHT, 18.0, 900.0  # px, px, px/s^2
    drop, restitution = 150.0, 0.78
    # Piecewise parabolas: each bounce keeps `restitution` of the speed.
    speed, tau, clock = math.sqrt(2 * g * drop), math.sqrt(2 * drop / g), t
    height = drop - 0.5 * g * clock * clock if clock < tau else 0.0
    if clock >= tau:
        clock -= tau
        while speed > 20:
            speed *= restitution
            flight = 2 * speed / g
            if clock < flight:
                height = speed * clock - 0.5 * g * clock * clock
                break
            clock -= flight
    cx, cy = 60 + 40 * t, floor - r - height
    ellipse(img, cx, floor + 2, r * (1.2 - height / drop * 0.5), 4, (0.35, 0.25, 0.18))  # shadow
    disc(img, cx, cy, r, (0.9, 0.45, 0.1))
    stick(img, cx - r, cy, cx + r, cy, 2, (0.25, 0.12, 0.05))  # seam, so the ball reads as a ball
    return img


def metronome(t: float) -> Canvas:
    """An upside-down pendulum swinging at 100 bpm: a tick at each end of the swing."""
    img = backdrop((0.95, 0.93, 0.88), (0.45, 0.3, 0.22), horizon=0.85)
    base_x, base_y = WIDTH / 2, 0.8 * HEIGHT
    # Body: a trapezoid approximated by stacked boxes.
    for i in range(12):
        y0 = 40 + i * (base_y - 40) / 12
        half = 22 + i * 3.5
        box(img, base_x - half, y0, base_x + half, y0 + (base_y - 40) / 12 + 1, (0.35, 0.2, 0.12))
    beats_per_s = 100 / 60
    angle = 0.45 * math.sin(math.pi * beats_per_s * t)  # one swing per beat
    tip_x, tip_y = base_x + 150 * math.sin(angle), base_y - 20 - 150 * math.cos(angle)
    stick(img, base_x, base_y - 20, tip_x, tip_y, 4, (0.85, 0.85, 0.8))
    weight_at = 0.6
    wx = base_x + (tip_x - base_x) * weight_at
    wy = base_y - 20 + (tip_y - base_y + 20) * weight_at
    box(img, wx - 10, wy - 7, wx + 10, wy + 7, (0.8, 0.7, 0.2))
    disc(img, base_x, base_y - 20, 6, (0.8, 0.7, 0.2))
    return img


def dog_and_car(t: float) -> Canvas:
    """Two sources: a dog on the left barking (head jerks, jaw opens) in bursts, and a car crossing behind."""
    img = backdrop((0.7, 0.85, 0.98), (0.4, 0.6, 0.3), horizon=0.62)
    road_y = 0.62 * HEIGHT
    box(img, 0, road_y, WIDTH, road_y + 26, (0.3, 0.3, 0.32))
    for x in range(0, WIDTH, 40):
        box(img, x + 8, road_y + 12, x + 28, road_y + 14, (0.9, 0.9, 0.85))
    # The car drives left to right, bumping slightly on the road.
    car_x = -90 + (WIDTH + 180) * (t / SECONDS)
    car_y = road_y + 4 + 1.5 * math.sin(2 * math.pi * 7 * t)
    box(img, car_x, car_y - 22, car_x + 80, car_y, (0.8, 0.1, 0.12))
    box(img, car_x + 16, car_y - 36, car_x + 60, car_y - 20, (0.75, 0.1, 0.12))
    box(img, car_x + 22, car_y - 33, car_x + 54, car_y - 23, (0.75, 0.88, 0.98))
    for wheel in (car_x + 16, car_x + 64):
        disc(img, wheel, car_y, 9, (0.1, 0.1, 0.1))
        disc(img, wheel, car_y, 4, (0.6, 0.6, 0.6))
    # The dog: two bursts of three barks; each bark lifts the head and opens the jaw.
    period, bark = 0.32, 0.0
    for burst_start in (0.6, 2.8):
        k = (t - burst_start) / period
        if 0 <= k < 3:
            bark = math.sin(math.pi * (k % 1.0)) ** 2
    body_x, body_y = 70.0, 0.86 * HEIGHT
    brown, dark = (0.55, 0.36, 0.2), (0.3, 0.18, 0.1)
    for leg in (-24, -12, 14, 26):
        stick(img, body_x + leg, body_y, body_x + leg, body_y + 26, 7, brown)
    ellipse(img, body_x, body_y, 38, 16, brown)
    stick(img, body_x - 36, body_y - 6, body_x - 50, body_y - 22, 5, brown)  # tail
    head_x, head_y = body_x + 42, body_y - 24 - 8 * bark
    disc(img, head_x, head_y, 15, brown)
    ellipse(img, head_x - 6, head_y - 10, 5, 10, dark)  # ear
    jaw = 3 + 9 * bark
    box(img, head_x + 6, head_y - 6, head_x + 30, head_y + 2, brown)  # snout
    box(img, head_x + 6, head_y + 2 + jaw - 4, head_x + 28, head_y + 2 + jaw, brown)  # lower jaw
    disc(img, head_x + 29, head_y - 5, 3, (0.1, 0.05, 0.05))  # nose
    disc(img, head_x + 2, head_y - 5, 2.5, (0.05, 0.05, 0.05))  # eye
    return img


def drummer(t: float) -> Canvas:
    """A stick striking a snare drum on every beat at 120 bpm, with an accent every fourth hit."""
    img = backdrop((0.2, 0.18, 0.25), (0.35, 0.3, 0.32), horizon=0.8)
    cx, top = WIDTH / 2, 0.55 * HEIGHT
    box(img, cx - 70, top, cx + 70, top + 55, (0.75, 0.1, 0.15))
    ellipse(img, cx, top + 55, 70, 10, (0.6, 0.08, 0.12))
    ellipse(img, cx, top, 70, 10, (0.92, 0.92, 0.88))
    for x in range(-60, 61, 30):
        stick(img, cx + x, top + 4, cx + x, top + 52, 3, (0.8, 0.8, 0.82))
    beat = (t * 2.0) % 1.0  # 120 bpm
    accent = int(t * 2.0) % 4 == 0
    lift = (1.0 - math.cos(2 * math.pi * beat)) / 2  # 0 at the hit, 1 halfway between hits
    raise_angle = (0.9 if accent else 0.55) * lift
    pivot_x, pivot_y = cx + 120, top - 40
    tip_x = pivot_x - 110 * math.cos(raise_angle)
    tip_y = pivot_y - 110 * math.sin(raise_angle) + 38 * (1 - lift)
    stick(img, pivot_x, pivot_y, tip_x, tip_y, 6, (0.9, 0.78, 0.55))
    disc(img, tip_x, tip_y, 4.5, (0.95, 0.85, 0.65))
    disc(img, pivot_x + 8, pivot_y + 4, 14, (0.85, 0.65, 0.5))  # the hand
    return img


SCENES: dict[str, Callable[[float], Canvas]] = {
    "bouncing_ball": bouncing_ball,
    "metronome": metronome,
    "dog_and_car": dog_and_car,
    "drummer": drummer,
}


def write_clip(path: Path, scene: Callable[[float], Canvas], *, seconds: float = SECONDS) -> Path:
    """Encode `scene` as a silent h264 mp4 (yuv420p, faststart) that browsers play inline."""
    with av.open(str(path), "w", format="mp4", options={"movflags": "faststart"}) as container:
        # One thread, no lookahead threads: the bytes stay the same from run to run on one x264 build.
        options = {
            "crf": "26",
            "preset": "slow",
            "threads": "1",
            "x264-params": "sliced-threads=0:lookahead-threads=1",
        }
        stream = container.add_stream("libx264", rate=FPS, options=options)
        stream.codec_context.thread_count = 1
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.codec_context.time_base = Fraction(1, FPS)
        for k in range(round(seconds * FPS)):
            rgb = (np.clip(scene(k / FPS), 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
            frame.pts = k
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def main() -> None:
    for name, scene in SCENES.items():
        path = write_clip(HERE / f"{name}.mp4", scene)
        print(f"{path.relative_to(HERE.parent)}: {path.stat().st_size / 1000:.0f} kB")


if __name__ == "__main__":
    main()
