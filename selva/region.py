"""Region re-roll: seconds a..b of one sound's take generated anew, the rest of the take kept.

The flow runs as inpainting in latent space. The region is widened to whole latent frames
(one latent is two mel hops: 512 samples, 32 ms at 16 kHz). A new seed's noise starts the
flow; after every step the latents outside the region are set back onto the straight line
from that noise to the take's own latents at the step's time, x_t = (1 - t) * noise + t * x1,
so at t = 1 they are the take's latents exactly and only the region's latents move freely,
steered by the same prompt and sync features (or a new prompt for the region) and by the
known latents around them. Only the 8 s windows that touch the region run.

The new audio enters the take's waveform inside the widened region only: the take's samples
outside it stay bit for bit, and an equal-power crossfade (cos/sin, gains whose squares sum
to one, at most `spec.REGION_MAX_FADE`) at each inner edge hides the seam. An edge on the
span's start or end needs no fade.

The known latents x1 are a take's kept latents (`selva.render` keeps those of the takes it
makes, beside their audio); a take without them (a project file from before, its latent
files gone) has them made again by re-running its flow, which is exact: takes are
reproducible from their seed, steps and CFG strength, so no VAE encoder is needed. An
arbitrary audio file would need the VAE's encoder and a mel; that is not done here.

An edited take is a new `Take` of the sound (seed: the re-roll's; `Take.edit`: the source
take, the widened region and the region's prompt), so `selva render` makes it again when its
files are gone (`redo_edits`): same seed and region, same audio to the bit on the CPU in fp32.

    result = reroll_region(pipe, project, sound=0, take=0, start=1.2, end=2.5, seed=7, folder=takes)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from selva import names
from selva.project import Edit, Project, Take
from selva.render import (
    Rendered,
    latent_file,
    mixed,
    random_seed,
    read_latents,
    render,
    take_calls,
    write_latents,
    write_take,
)
from selva.sequence import SequenceLengths
from selva.spec import REGION_MAX_FADE, REGION_MIN_LATENT_FRAMES, SEED, CancelToken, InputError, check_prompt
from selva.windows import MAX_GAIN, Window, join_windows

if TYPE_CHECKING:
    import torch

    from selva.pipeline import SelvaPipeline, StageCallback, StepCallback

_EPS = 1e-6  # seconds times a rate can land a hair off a whole frame

Latents = list[np.ndarray]  # per window (L_w, C) float32, the flow's normalised space


@dataclass(frozen=True)
class Region:
    """The region as generated: whole latent frames, their samples and the fades inside them."""

    start_frame: int  # latent frames from the span's start
    end_frame: int  # exclusive
    frame_samples: int  # waveform samples per latent frame (two mel hops)
    sample_rate: int
    total_samples: int  # the span's
    max_fade: int  # samples

    @property
    def start_sample(self) -> int:
        return self.start_frame * self.frame_samples

    @property
    def end_sample(self) -> int:
        return min(self.end_frame * self.frame_samples, self.total_samples)

    @property
    def start(self) -> float:
        return self.start_sample / self.sample_rate

    @property
    def end(self) -> float:
        return self.end_sample / self.sample_rate

    @property
    def fade_in(self) -> int:
        """Samples of the crossfade at the start (0 on the span's start: nothing to join)."""
        return 0 if self.start_sample == 0 else self._fade

    @property
    def fade_out(self) -> int:
        return 0 if self.end_sample == self.total_samples else self._fade

    @property
    def _fade(self) -> int:
        return min(self.max_fade, (self.end_sample - self.start_sample) // 2)

    def describe(self) -> str:
        ms = [round(f / self.sample_rate * 1000) for f in (self.fade_in, self.fade_out)]
        return (
            f"{self.start:.3f}-{self.end:.3f} s (latent frames {self.start_frame}-{self.end_frame - 1}, "
            f"fades {ms[0]}/{ms[1]} ms)"
        )


def widen(start: float, end: float, *, duration: float, sample_rate: int, hop_length: int) -> Region:
    """Seconds `start`..`end` of a `duration` s span widened to whole latent frames, checked."""
    for name, value in (("start", start), ("end", end)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise InputError(f"the region's {name} must be a number of seconds, got {value!r}")
    if not 0 <= start < end:
        raise InputError(f"the region must start at 0 s or later and end after it starts, got {start}..{end}")
    if end > duration + 1 / sample_rate:  # a widened end may round up to the span's last sample
        raise InputError(f"the region ends at {end:g} s, past the span's end at {duration:.3f} s")
    frame_samples = 2 * hop_length
    shortest = REGION_MIN_LATENT_FRAMES * frame_samples / sample_rate
    if end - start + _EPS < shortest:
        raise InputError(
            f"the region is {end - start:.3f} s; the shortest is {REGION_MIN_LATENT_FRAMES} latent "
            f"frame(s), {shortest:.3f} s"
        )
    return Region(
        start_frame=math.floor(start * sample_rate / frame_samples + _EPS),
        end_frame=math.ceil(min(end, duration) * sample_rate / frame_samples - _EPS),
        frame_samples=frame_samples,
        sample_rate=sample_rate,
        total_samples=round(duration * sample_rate),
        max_fade=round(REGION_MAX_FADE * sample_rate),
    )


def check_region(
    project: Project,
    sound: int,
    take: int | None,
    start: float,
    end: float,
    *,
    sample_rate: int,
    hop_length: int,
    prompt: str | None = None,
    seed: int | None = None,
) -> Region:
    """Every check of a re-roll that needs no model: the sound and take exist, the region fits the span;
    the region widened to latent frames."""
    count = len(project.sounds)
    if not isinstance(sound, int) or isinstance(sound, bool) or not 0 <= sound < count:
        raise InputError(f"there is no sound {_number(sound)}: the project has {count} (from 1)")
    takes = project.sounds[sound].takes
    index = project.sounds[sound].chosen if take is None else take
    if index is None or not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(takes):
        raise InputError(f"sound {sound + 1} has no take {_number(index)}: it has {len(takes)} (from 1)")
    if prompt is not None:
        check_prompt("the region's prompt", prompt)
        if not prompt.strip():
            raise InputError("the region's prompt is empty: give one, or leave it out for the sound's own")
    if seed is not None:
        SEED.check(seed)
    # A project never rendered: the region is checked against its span once rendering settles it.
    duration = end if project.duration is None else project.duration
    return widen(start, end, duration=duration, sample_rate=sample_rate, hop_length=hop_length)


def _number(index: object) -> object:
    """An index as messages count (from 1, as `sound 1 take 2`)."""
    return index + 1 if isinstance(index, int) and not isinstance(index, bool) else index


@dataclass
class RegionResult:
    """A re-roll: the project rendered with the edited take added (and chosen), where it is, how."""

    rendered: Rendered  # its `audio` and `latents` hold the new take at (sound, take)
    sound: int
    take: int  # index of the new take in the sound's takes
    seed: int
    region: Region

    @property
    def audio(self) -> np.ndarray:
        return self.rendered.audio[(self.sound, self.take)]


def reroll_region(
    pipe: SelvaPipeline,
    project: Project,
    sound: int,
    take: int | None,
    start: float,
    end: float,
    *,
    seed: int | None = None,
    prompt: str | None = None,
    folder: str | Path | None = None,
    callback_on_step_end: StepCallback | None = None,
    callback_on_stage: StageCallback | None = None,
    cancel: CancelToken | None = None,
) -> RegionResult:
    """Take `take` of sound `sound` (None: the chosen one) with seconds `start`..`end` generated anew.

    `seed` None draws one (the result names it); `prompt` None keeps the sound's. The
    project is rendered first (takes it lacks are made, in `folder` as `render` keeps
    them), then the edited take is added to the sound and chosen, its files in `folder`.
    """
    seed = random_seed() if seed is None else seed
    rate, hop = pipe.sample_rate, pipe.variant.hop_length
    check_region(project, sound, take, start, end, sample_rate=rate, hop_length=hop, prompt=prompt, seed=seed)
    rendered = render_with_edits(pipe, project, folder, callback_on_step_end=callback_on_step_end,
                                 callback_on_stage=callback_on_stage, cancel=cancel)  # fmt: skip
    project = rendered.project  # the span settled
    index = project.sounds[sound].chosen if take is None else take
    region = widen(start, end, duration=project.duration, sample_rate=rate, hop_length=hop)
    source = project.sounds[sound].takes[index]
    edited = Take(seed, source.steps, source.cfg_strength, batch=project.next_batch(),
                  edit=Edit(index, region.start, region.end, prompt))  # fmt: skip
    project = project.with_sound(sound, project.sounds[sound].with_takes([edited]))
    new = len(project.sounds[sound].takes) - 1
    audio, latents = dict(rendered.audio), dict(rendered.latents)
    project = _make_edit(pipe, project, audio, latents, sound, new, folder,
                         callback_on_step_end=callback_on_step_end, cancel=cancel)  # fmt: skip
    made = mixed(project, audio, rate, generated=[*rendered.generated, (sound, new)], latents=latents,
                 timings=rendered.timings, windows=rendered.windows, info=rendered.info)  # fmt: skip
    return RegionResult(rendered=made, sound=sound, take=new, seed=seed, region=region)


def render_with_edits(
    pipe: SelvaPipeline, project: Project, folder: str | Path | None, **options: Any
) -> Rendered:
    """`selva.render.render` that also makes again the region re-rolls whose audio is gone."""
    return render(pipe, project, folder, redo_edits=redo_edits, **options)


def redo_edits(
    pipe: SelvaPipeline,
    project: Project,
    audio: dict[tuple[int, int], np.ndarray],
    latents: dict[tuple[int, int], Latents],
    folder: str | Path | None,
    *,
    cancel: CancelToken | None = None,
) -> Project:
    """The edited takes that have no audio made again (`render` calls this once the other takes exist)."""
    for k, sound in enumerate(project.sounds):
        for t, take in enumerate(sound.takes):
            if take.edit is not None and (k, t) not in audio:
                project = _make_edit(pipe, project, audio, latents, k, t, folder, cancel=cancel)
    return project


def splice(original: np.ndarray, new: np.ndarray, region: Region) -> np.ndarray:
    """`original` with `new` (the region's samples) inside the region, crossfaded at its inner edges.

    Equal power: in a fade the new audio's gain is sin and the take's cos of the same
    phase, so the squares sum to one; outside the region nothing changes. Like every take, the
    result stays in [-1, 1]: two alike signals can sum past full scale mid-fade (up to sqrt 2).
    """
    a, b = region.start_sample, region.end_sample
    keep, put = fade_gains(region)
    out = np.array(original, dtype=np.float32, copy=True)
    out[a:b] = np.clip(keep * original[a:b] + put * np.asarray(new, dtype=np.float32), -1.0, 1.0)
    return out


def fade_gains(region: Region) -> tuple[np.ndarray, np.ndarray]:
    """Over the region's samples: (the take's gain, the new audio's gain)."""
    n = region.end_sample - region.start_sample
    keep, put = np.zeros(n, dtype=np.float32), np.ones(n, dtype=np.float32)
    for fade, at in (
        (region.fade_in, slice(0, region.fade_in)),
        (region.fade_out, slice(n - region.fade_out, n)),
    ):
        if not fade:
            continue
        phase = (np.arange(fade, dtype=np.float64) + 0.5) / fade * (math.pi / 2)
        rising, falling = np.sin(phase).astype(np.float32), np.cos(phase).astype(np.float32)
        if at.start == 0:
            put[at], keep[at] = rising, falling
        else:
            put[at], keep[at] = falling, rising
    return keep, put


# -- the flow ------------------------------------------------------------------------------------


def _make_edit(
    pipe: SelvaPipeline,
    project: Project,
    audio: dict[tuple[int, int], np.ndarray],
    latents: dict[tuple[int, int], Latents],
    k: int,
    t: int,
    folder: str | Path | None,
    *,
    callback_on_step_end: StepCallback | None = None,
    cancel: CancelToken | None = None,
) -> Project:
    """Edited take t of sound k made from its source (whose audio is in `audio`): audio, latents, files."""
    import torch

    sound, take = project.sounds[k], project.sounds[k].takes[t]
    edit = take.edit
    region = widen(
        edit.start,
        edit.end,
        duration=project.duration,
        sample_rate=pipe.sample_rate,
        hop_length=pipe.variant.hop_length,
    )
    prompt = edit.prompt if edit.prompt is not None else sound.prompt
    span = pipe.plan_span(project.video, start=project.start, duration=project.duration)
    known = _take_latents(pipe, project, audio, latents, k, edit.source, span, cancel=cancel)
    with torch.inference_mode():
        positive, negative_clip = pipe.encode_prompts(prompt, sound.negative_prompt)
        sync_f = None if span.video is None else pipe.sync_features(span, [prompt], cancel=cancel)[0]
        masks = _window_masks(span.windows, region, pipe)
        noise = pipe.prepare_latents(span.windows, 1, take.seed)  # every window drawn: the rule stays
        new = list(known)
        pieces = []
        for number, (w, mask) in enumerate(masks):
            x1 = torch.from_numpy(known[w.index])[None].to(pipe.device)
            cond, uncond = pipe.prepare_conditions(
                None if sync_f is None else sync_f[:, w.sync_slice].to(pipe.device),
                positive.clip,
                negative_clip,
                num_samples=1,
                lengths=_lengths(pipe, w.duration),
            )
            step_end = _reimposed(noise[w.index], x1, mask.to(pipe.device), callback_on_step_end)
            x = pipe.synthesis.flow(
                noise[w.index],
                cond,
                uncond,
                steps=take.steps,
                cancel=cancel,
                cfg_strength=take.cfg_strength,
                callback_on_step_end=step_end,
                state={"window": w.index, "windows": len(span.windows), "pass": number, "passes": len(masks)},
                caller=pipe,
            )
            new[w.index] = x[0].cpu().numpy()
            mel = pipe.decode_latents(pipe.generator.unnormalize(x))
            pieces.append(pipe.vocode(mel).float().cpu())
    ran = [w for w, _ in masks]
    joined = join_windows(pieces, ran, region.total_samples)[0].numpy()
    original = audio[(k, edit.source)]
    fresh = joined[region.start_sample : region.end_sample]
    if len(span.windows) > 1:
        fresh = fresh * _level(original, joined, ran, region)
    wave = splice(original, np.clip(fresh, -1.0, 1.0), region)
    audio[(k, t)], latents[(k, t)] = wave, new
    if folder is not None:
        path = write_take(Path(folder) / names.edit_file(sound.prompt, t, take.seed), wave)
        write_latents(latent_file(path), new)
        takes = list(sound.takes)
        takes[t] = replace(take, audio=str(path))
        project = project.with_sound(k, replace(sound, takes=tuple(takes)))
    return project


def _window_masks(
    windows: list[Window], region: Region, pipe: SelvaPipeline
) -> list[tuple[Window, torch.Tensor]]:
    """The windows the region touches, each with its latent frames to generate anew: (1, L_w, 1) bool.

    A window's latent j covers its samples [j, j + 1) * frame_samples from its start. At 16 kHz
    window starts (0.32 s) fall on whole latents, so the mask is exactly the region; elsewhere it
    takes every latent the region touches.
    """
    import torch

    out = []
    fs = region.frame_samples
    for w in windows:
        length = _lengths(pipe, w.duration).latent_len
        first = max(0, (region.start_sample - w.start_sample) // fs)
        last = min(length, -(-(region.end_sample - w.start_sample) // fs))
        if first < last:
            mask = torch.zeros(1, length, 1, dtype=torch.bool)
            mask[:, first:last] = True
            out.append((w, mask))
    return out


def _lengths(pipe: SelvaPipeline, duration: float) -> SequenceLengths:
    return SequenceLengths.from_duration(
        duration, sample_rate=pipe.sample_rate, hop_length=pipe.variant.hop_length
    )


def _reimposed(noise: torch.Tensor, x1: torch.Tensor, mask: torch.Tensor, then: StepCallback | None):
    """A step callback putting the latents outside `mask` back at x_t = (1 - t) * noise + t * x1."""
    import torch

    noise = noise.float()

    def step_end(caller, i: int, t: float, state: dict) -> dict:
        x = torch.where(mask, state["latents"], (1.0 - t) * noise + t * x1)
        if then is not None:
            changed = then(caller, i, t, {**state, "latents": x})
            if changed and "latents" in changed:
                x = changed["latents"]
        return {"latents": x}

    return step_end


def _level(original: np.ndarray, joined: np.ndarray, ran: list[Window], region: Region) -> np.float32:
    """The gain that matches the new windows' level to the take's around the region.

    A long take's windows were level-matched as they were joined (`windows.join_windows`), so
    the take's level there may differ from a window's own; the windows that ran again are
    compared with the take over what they cover outside the region (within 1/MAX_GAIN..MAX_GAIN).
    """
    lo = ran[0].start_sample
    hi = min(region.total_samples, ran[-1].start_sample + ran[-1].num_samples)
    around = np.r_[lo : region.start_sample, region.end_sample : hi]
    if not len(around):
        return np.float32(1.0)
    have, new = _rms(original[around]), _rms(joined[around])
    if new < 1e-6:
        return np.float32(1.0)
    return np.float32(min(max(have / new, 1 / MAX_GAIN), MAX_GAIN))


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def _take_latents(
    pipe: SelvaPipeline,
    project: Project,
    audio: dict[tuple[int, int], np.ndarray],
    latents: dict[tuple[int, int], Latents],
    k: int,
    t: int,
    span,
    *,
    cancel: CancelToken | None = None,
) -> Latents:
    """Take t's latents: kept ones (this run, or its latent file), else made again exactly."""
    take = project.sounds[k].takes[t]
    if (k, t) not in latents and take.audio is not None:
        kept = read_latents(latent_file(take.audio))
        if kept is not None and len(kept) == len(span.windows):
            latents[(k, t)] = kept
    if (k, t) in latents:
        return latents[(k, t)]
    if take.edit is not None:  # an edit's latents: made again with its audio, which stays as it is
        again = dict(audio)
        again.pop((k, t))
        _make_edit(pipe, project, again, latents, k, t, None, cancel=cancel)
        return latents[(k, t)]
    _rerun_flow(pipe, project, latents, k, t, span, cancel=cancel)
    return latents[(k, t)]


def _rerun_flow(pipe: SelvaPipeline, project: Project, latents, k: int, t: int, span, *, cancel=None) -> None:
    """The latents of the call that made take t, by running its flow again (the whole batch, as
    `render` does: batched rows may differ from a lone call in the last bits); no VAE or vocoder."""
    import torch

    sound = project.sounds[k]
    members = next(m for m in take_calls(sound) if t in m)
    first = sound.takes[members[0]]
    with torch.inference_mode():
        positive, negative_clip = pipe.encode_prompts(sound.prompt, sound.negative_prompt)
        sync_f = None if span.video is None else pipe.sync_features(span, [sound.prompt], cancel=cancel)[0]
        made = pipe.sample_latents(
            sync_f,
            positive.clip,
            negative_clip,
            windows=span.windows,
            steps=first.steps,
            cfg_strength=first.cfg_strength,
            seed=first.seed,
            num_samples=len(members),
            cancel=cancel,
        )
    for row, member in enumerate(members):
        latents.setdefault((k, member), [made[w.index][row].cpu().numpy() for w in span.windows])
