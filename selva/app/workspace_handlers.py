"""The workspace's handlers (testable without a browser): Generate, Re-roll, re-mix, the project file.

Widget values in, `area_outputs`' values out (`show`); the model runs only in `Workspace.generate`
and `Workspace.reroll` (through `GenerationService.render_project`). A re-mix reads the takes'
exact waveforms back from their files and mixes them again (`remix`): no model, no GPU queue.
The layout and the events are `selva.app.workspace`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import gradio as gr

from selva import spec
from selva.app.handlers import REQUEST_CANCEL, Studio, session_of, upload_dirs, user_errors
from selva.app.results import Take, add_kept, seed_alone
from selva.project import MAX_SOUNDS, Mix, Project, Sound
from selva.project_files import ProjectResult, deliver_project
from selva.serving import MAX_CANDIDATES, GenerationResult, parse_request
from selva.spec import InputError

MIX_FIELDS = ("gain", "pan", "mute", "solo")
# Values `take_card_values` gives per take slot: its card, its player, its score line, "Use this take".
TAKE_CARD = 4
# That button's two faces: on the chosen take it stays in place, disabled, saying so.
USE_THIS_TAKE, IN_THE_MIX = "Use this take", "✓ In the mix"
# How many values `show` gives: the state, the area, the mix video, the info, the project file,
# per sound its section, its label, and a take card's values per take slot; then the bundle.
SHOWN = 5 + MAX_SOUNDS * (2 + TAKE_CARD * MAX_CANDIDATES) + 1


@dataclass(frozen=True)
class Current:
    """The project on show and its take audio's sample rate (what a re-mix needs, with no model)."""

    project: Project
    sample_rate: int
    # (sound, take) -> its FLAC. Not hashed: gradio hashes a watched state, and the project says
    # what changed (a re-mix also changes a gain, a pan or the chosen take).
    players: dict[tuple[int, int], str] = field(default_factory=dict, hash=False)


def show(result: ProjectResult, sample_rate: int) -> list[Any]:
    """`area_outputs`' values for a delivered project: the state, the mix, every sound's takes, the bundle."""
    project = result.project
    current = Current(project, sample_rate, dict(result.take_players))
    mix_video = gr.update(value=result.mix_video, visible=result.mix_video is not None)  # none: prompt only
    values: list[Any] = [current, gr.update(visible=True), mix_video]
    values += [result.info, result.project_file]
    for k in range(MAX_SOUNDS):
        sound = project.sounds[k] if k < len(project.sounds) else None
        values.append(gr.update(visible=sound is not None))
        values.append(f"**Sound {k + 1}: {sound.prompt}**" if sound is not None else "")
        # The latest takes, the chosen one among them: at most MAX_CANDIDATES cards per sound.
        shown = _shown_takes(sound) if sound is not None else []
        for slot in range(MAX_CANDIDATES):
            take = shown[slot] if slot < len(shown) else None
            values += take_card_values(current, k, take)
    return [*values, bundle_of(result, sample_rate)]


def warn_unscored(result: Any) -> None:
    """Scores asked for and not made (no CLAP): a warning toast; the result shows all the same."""
    if getattr(result, "score_warning", None):
        from selva.app.toasts import notify

        notify(f"The takes are not scored: {result.score_warning}", "No scores", "warning")


def bundle_of(result: ProjectResult, sample_rate: int) -> str:
    """The result's download bundle (`selva.bundle`), written into the result's own folder."""
    from selva.bundle import bundle_file, write_bundle

    project = result.project
    written = write_bundle(
        bundle_file(Path(result.project_file).parent, project), project, sample_rate,
        project_file=result.project_file, mix_video=result.mix_video, tracks_video=result.tracks_video,
    )  # fmt: skip
    return str(written)


def take_card_values(current: Current, k: int, t: int | None) -> list[Any]:
    """A take card's values (`workspace.take_card`): sound `k`'s take `t` (None: the card hidden).

    Every take's look is decided here: its label (take, seed, the best-scored mark, whether it
    is in the mix), its score line (when the takes were scored) and which actions it offers.
    The best mark is a hint: the take in the mix stays the one the user chose.
    """
    if t is None:
        return [gr.update(visible=False), gr.update(value=None), gr.update(value="", visible=False),
                gr.update(visible=False)]  # fmt: skip
    from selva.project_scores import best_take, score_line

    sound = current.project.sounds[k]
    take = sound.takes[t]
    chosen = t == sound.chosen
    best = len(sound.takes) > 1 and best_take(sound.takes) == t
    label = f"Take {t + 1} · seed {take.seed}" + (" · ★ best match" if best else "")
    label += " (in the mix)" if chosen else ""
    player = gr.update(value=current.players.get((k, t)), label=label)
    line = score_line(take.score) if take.score is not None else ""
    # The chosen take's button stays in place, disabled, so every card's buttons line up.
    use = gr.update(value=IN_THE_MIX if chosen else USE_THIS_TAKE, interactive=not chosen, visible=True)
    return [gr.update(visible=True), player, gr.update(value=line, visible=bool(line)), use]


def _take_in_slot(current: Current | None, k: int, slot: int) -> tuple[Sound, Any, str] | None:
    """The sound, take and FLAC that card `slot` of sound `k` shows (None: the card shows none)."""
    if current is None or k >= len(current.project.sounds):
        return None
    sound = current.project.sounds[k]
    shown = _shown_takes(sound)
    if slot >= len(shown) or (k, shown[slot]) not in current.players:
        return None
    return sound, sound.takes[shown[slot]], current.players[(k, shown[slot])]


def _shown_takes(sound: Sound) -> list[int]:
    """Take indices a sound's players show: its last MAX_CANDIDATES takes, keeping the chosen one,
    best-scored first when they were scored (`takes_by_score`; unscored ones keep their order)."""
    from selva.project_scores import takes_by_score

    latest = list(range(len(sound.takes)))[-MAX_CANDIDATES:]
    if sound.chosen is not None and sound.chosen not in latest:
        latest = [sound.chosen, *latest[1:]]
    return [i for i, _, _ in takes_by_score(sound) if i in latest]


# -- handlers ------------------------------------------------------------------------------------------


class Workspace:
    """The workspace's handlers around a `Studio` (its slot and service); testable without a browser."""

    def __init__(self, studio: Studio):
        self.studio = studio
        self.service = studio.service

    # Generate, Re-roll: the model runs (the GPU queue) ------------------------------------------------

    def generate(
        self,
        video: str | None,
        count: int,
        rows: Sequence[Any],
        settings: Sequence[Any],
        original: float | None,
        restored: Project | None = None,
        progress: Any = None,
        request: Any = None,
        *,
        score: bool = False,
        sample_rate: int | str | None = spec.DEFAULT_OUTPUT_RATE,
        loudness: float | str | None = spec.DEFAULT_LOUDNESS_TARGET,
    ) -> list[Any]:
        """Render the first `count` rows (`row_inputs`' values) as one project; `area_outputs`' values
        and the restored project (now used up: None). `score` scores the takes with CLAP;
        `sample_rate` (48000 or "model") and `loudness` (a LUFS target or "off") are the delivery's.

        `settings` are steps, CFG, seed, duration, start, variant and Candidates. Every sound gets
        Candidates takes (sound j: seed + j * Candidates + k); an uploaded project whose prompts
        match the rows keeps its takes, so only those without audio run.
        """
        steps, cfg, seed, duration, start, variant, num_samples = settings
        with user_errors(upload_dirs(video)):
            sounds = sounds_from_rows(int(count), rows)
            req = parse_request(
                video,
                sounds[0].prompt,
                sounds[0].negative_prompt,
                steps,
                cfg,
                seed,
                duration,
                start,
                variant,
                num_samples,
                max_duration=self.studio.slot.max_duration,
            )
            mix = Mix(original_audio_gain=float(original or 0.0) if video else 0.0)
            project = Project(
                sounds=tuple(sounds),
                video=str(req.video) if req.video is not None else None,
                start=float(req.start),
                duration=req.duration,
                variant=req.variant,
                mix=mix,
            )
            if restored is not None and _same_sounds(restored, project):
                project = replace(project, sounds=_with_takes(project.sounds, restored.sounds))
            else:
                from selva.render import draft_takes

                project = draft_takes(
                    project,
                    seed=req.seed,
                    count=req.num_samples,
                    steps=req.steps,
                    cfg_strength=req.cfg_strength,
                )
            result = self._render(project, progress, request, score, sample_rate, loudness)
        return [*show(result, self.sample_rate_of(result.project)), None]

    def reroll(
        self,
        k: int,
        current: Current | None,
        num_samples: float,
        progress: Any = None,
        request: Any = None,
        *,
        score: bool = False,
        sample_rate: int | str | None = spec.DEFAULT_OUTPUT_RATE,
        loudness: float | str | None = spec.DEFAULT_LOUDNESS_TARGET,
    ) -> list[Any]:
        """New takes of sound `k` alone (a fresh seed, Candidates of them); the others are read back."""
        from selva.render import draft_takes

        if current is None or k >= len(current.project.sounds):
            raise gr.Error(
                "Generate first: a re-roll draws new takes of a sound already made.",
                title="Nothing to re-roll",
            )
        with user_errors():
            count = int(spec.NUM_SAMPLES.check(int(num_samples or 1), by_label=True))
            project = draft_takes(current.project, count=count, sounds=[k])
            result = self._render(project, progress, request, score, sample_rate, loudness)
        return show(result, self.sample_rate_of(result.project))

    def _render(
        self, project: Project, progress: Any, request: Any, score: bool, sample_rate: Any, loudness: Any
    ) -> ProjectResult:
        """`project` rendered (only takes without audio run), scored if asked, delivered as set."""
        result = self.service.render_project(
            project, progress, session=session_of(request), cancel=REQUEST_CANCEL.get(), score=bool(score),
            sample_rate=spec.DEFAULT_OUTPUT_RATE if sample_rate is None else sample_rate, loudness=loudness,
        )  # fmt: skip
        warn_unscored(result)
        return result

    # Re-mix: no model ---------------------------------------------------------------------------------

    def remix(self, current: Current | None, *values: Any) -> list[Any]:
        """The project on show with `values` (gain, pan, mute, solo per sound, then the original's level)
        mixed again from its takes' files: no model runs.
        """
        if current is None:  # nothing generated yet: the controls only set up the next Generate
            return [gr.update()] * SHOWN
        with user_errors():
            project = with_mix_values(current.project, values)
            return show(
                remix(project, current.sample_rate, self.service.outputs.new_folder()), current.sample_rate
            )

    def use_take(self, k: int, t: int, current: Current | None, *values: Any) -> list[Any]:
        """Sound `k`'s take `t` into the mix (a re-mix)."""
        if current is None:
            return self.remix(current, *values)
        sound = current.project.sounds[k]
        shown = _shown_takes(sound)
        if t >= len(shown):
            raise gr.Error(
                "That take is no longer on show: pick one of the takes shown.", title="No such take"
            )
        project = current.project.with_sound(k, replace(sound, chosen=shown[t]))
        return self.remix(Current(project, current.sample_rate), *values)

    def keep_take(
        self, k: int, slot: int, current: Current | None, kept: list[Take] | None
    ) -> tuple[Any, ...]:
        """Sound `k`'s take in card `slot` into this session's kept list (its FLAC, the prompt and seed)."""
        found = _take_in_slot(current, k, slot)
        if found is None:
            gr.Warning("Nothing to keep here yet: generate first.")
            return list(kept or []), gr.update(), gr.update()
        sound, take, path = found
        where = f"of {Path(current.project.video).name}" if current.project.video else "from the prompt alone"
        label = f"{sound.prompt} · seed {take.seed} · {current.project.duration or 0:.2f} s {where}"
        return add_kept(kept, Take(label, take.seed, (path,)))

    def take_seed(self, k: int, slot: int, current: Current | None) -> tuple[Any, Any]:
        """Sound `k`'s take in card `slot`: its seed and one candidate, for the Seed and Candidates fields."""
        found = _take_in_slot(current, k, slot)
        if found is None:
            return gr.update(), gr.update()
        return seed_alone(found[1].seed)

    def adopt(self, result: GenerationResult | None, *values: Any) -> list[Any]:
        """After the one-sound `/generate`: its project (its candidates as sound 1's takes) on show.

        The info line is the run's own (model, device, stage times), not the re-mix's.
        """
        if result is None or result.project is None:
            return [gr.update()] * SHOWN
        project = result.project
        shown = self.remix(Current(project, self.sample_rate_of(project)), *values)
        shown[3] = result.info
        return shown

    # The project file ---------------------------------------------------------------------------------

    def restore(self, path: str | None) -> list[Any]:
        """An uploaded project file back in the rows and settings; Generate renders its missing takes.

        Take files outside this server's outputs are not read (an uploaded file only names them).
        Returns `restore_outputs`' values.
        """
        with user_errors([str(Path(path).parent)] if path else []):
            if not path:
                raise InputError("no project file came with the upload")
            project = Project.load(path)
        root = self.service.outputs.root.resolve()
        sounds = tuple(
            replace(s, takes=tuple(replace(t, audio=_inside(t.audio, root)) for t in s.takes))
            for s in project.sounds
        )
        return project_values(replace(project, sounds=sounds))

    def sample_rate_of(self, project: Project) -> int:
        pipe = self.studio.slot.pipe
        if pipe is not None and pipe.variant.name == project.variant:
            return pipe.variant.sample_rate
        from selva.variants import known_variants

        return known_variants()[project.variant or self.studio.slot.default_variant].sample_rate


def project_values(project: Project) -> list[Any]:
    """`project`'s sounds and settings as `restore_outputs`' values: the rows, the settings, and the
    project itself, waiting for Generate (which renders the takes whose audio is not on this server).
    """
    sounds = project.sounds
    count = len(sounds)
    first = sounds[0].take
    seed = sounds[0].takes[0].seed if sounds[0].takes else -1
    candidates = (
        sum(1 for t in sounds[0].takes if t.batch == sounds[0].takes[0].batch) if sounds[0].takes else 1
    )
    values: list[Any] = [count, *[gr.update(visible=k < count) for k in range(1, MAX_SOUNDS)]]
    values += [gr.update(interactive=count < MAX_SOUNDS), gr.update(interactive=count > 1)]
    padded = [*sounds, *[None] * (MAX_SOUNDS - count)]
    values += [s.prompt if s else "" for s in padded]
    values += [s.negative_prompt if s else "" for s in padded]
    values += [s.gain if s else spec.STEM_GAIN.default for s in padded]
    values += [s.pan if s else spec.PAN.default for s in padded]
    values += [s.mute if s else False for s in padded]
    values += [s.solo if s else False for s in padded]
    values += [
        first.steps if first else gr.update(),
        first.cfg_strength if first else gr.update(),
        seed,
        project.duration or 0.0,
        project.start,
        project.variant or gr.update(),
        candidates,
        project.mix.original_audio_gain,
        project,
    ]
    return values


# -- the project from the rows, and back -------------------------------------------------------------------


def sounds_from_rows(count: int, values: Sequence[Any]) -> list[Sound]:
    """The first `count` rows as sounds (`values` as `row_inputs` lists them); an empty prompt is an error."""
    n = MAX_SOUNDS
    prompts, negatives, gains, pans, mutes, solos = (values[i * n : (i + 1) * n] for i in range(6))
    sounds = []
    for k in range(max(1, min(n, count))):
        prompt = (prompts[k] or "").strip()
        if not prompt:
            raise InputError(f"Sound {k + 1} has no prompt: type the sound it should make, or remove it.")
        sound = Sound(
            prompt,
            (negatives[k] or "").strip(),
            gain=float(gains[k]),
            pan=float(pans[k]),
            mute=bool(mutes[k]),
            solo=bool(solos[k]),
        )
        sounds.append(sound.checked(f"sound {k + 1}"))
    return sounds


def with_mix_values(project: Project, values: Sequence[Any]) -> Project:
    """`project` with the controls' gain, pan, mute, solo (each over MAX_SOUNDS) and the original's level."""
    n = MAX_SOUNDS
    gains, pans, mutes, solos = (values[i * n : (i + 1) * n] for i in range(4))
    level = float(values[4 * n] or 0.0) if project.video is not None else 0.0
    sounds = tuple(
        replace(s, gain=float(gains[k]), pan=float(pans[k]), mute=bool(mutes[k]), solo=bool(solos[k]))
        for k, s in enumerate(project.sounds)
    )
    return replace(project, sounds=sounds, mix=replace(project.mix, original_audio_gain=level)).checked(
        max_duration=float("inf")
    )


def remix(project: Project, sample_rate: int, folder: Path) -> ProjectResult:
    """Mix `project`'s chosen takes again from their files and deliver it into `folder`: no model runs."""
    from selva.progress import project_info
    from selva.render import mixed, read_take

    audio = {}
    for k, sound in enumerate(project.sounds):
        for t, take in enumerate(sound.takes):
            if take.audio is None:
                raise InputError(f"sound {k + 1}'s take {t + 1} has not been generated: press Generate")
            audio[(k, t)] = read_take(take.audio)
    rendered = mixed(project, audio, sample_rate)
    return deliver_project(rendered, folder, project_info(rendered) + " · re-mixed (no model run)")


def _same_sounds(restored: Project | None, project: Project) -> bool:
    if restored is None or len(restored.sounds) != len(project.sounds):
        return False
    pairs = zip(restored.sounds, project.sounds, strict=True)
    return all((a.prompt, a.negative_prompt) == (b.prompt, b.negative_prompt) and a.takes for a, b in pairs)


def _with_takes(sounds: tuple[Sound, ...], restored: tuple[Sound, ...]) -> tuple[Sound, ...]:
    return tuple(replace(s, takes=r.takes, chosen=r.chosen) for s, r in zip(sounds, restored, strict=True))


def _inside(audio: str | None, root: Path) -> str | None:
    """`audio` if it is a file under `root` (our outputs), else None: it will be generated again."""
    if audio is None:
        return None
    path = Path(audio).resolve()
    return str(path) if path.is_relative_to(root) and path.is_file() else None


def resize(count: int, delta: int) -> list[Any]:
    """Show `count + delta` sounds (1 to MAX_SOUNDS): the count, rows 2..4, Add and Remove."""
    count = max(1, min(MAX_SOUNDS, int(count) + delta))
    rows = [gr.update(visible=k < count) for k in range(1, MAX_SOUNDS)]
    return [count, *rows, gr.update(interactive=count < MAX_SOUNDS), gr.update(interactive=count > 1)]


def one_sound(count: int) -> None:
    """Gate: the page's `/generate` runs for one sound; several go to the workspace (silently stops)."""
    if int(count) > 1:
        raise gr.Error("several sounds", visible=False, print_exception=False)


def several_sounds(count: int) -> None:
    if int(count) <= 1:
        raise gr.Error("one sound", visible=False, print_exception=False)
