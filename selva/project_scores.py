"""A rendered project's takes scored with CLAP, the best take chosen, and the scores as a file.

    project = score_project(scorer, rendered)          # every take with audio gets its `Score`
    project = choose_best(project)                     # each sound's chosen take: its best-scored
    rendered = remixed(rendered, project)              # the mix of the newly chosen takes
    write_scores(project, out / "dog_scores.json")

What a front end shows: `scored_takes(project)` (each scored take's numbers and whether it is
its sound's best, for a result or an API answer), `score_line(score)` (a take card's line) and
`takes_by_score(sound)` (a sound's takes best first, the best marked; choosing stays the user's).

A take is scored against its own prompt (agreement) and against its negative
prompt and the prompts of the project's OTHER sounds (leakage): SelVA picks one
source out of a scene, so a "dog barking" take that also matches "car engine"
followed the wrong one. `selva.scoring` holds the model and the formula; this
module only carries the numbers into the project. Scoring is an extra: callers
catch its errors and keep the generation (see `selva.scoring`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from selva import spec
from selva.project import Project, Score, Sound, Take, write_json
from selva.render import Rendered, mix_project

if TYPE_CHECKING:
    from selva.scoring import Scorer, TakeScore

SCORES_SUFFIX = "_scores.json"  # `<name>_scores.json` beside a clip's outputs


def as_score(take_score: TakeScore) -> Score:
    """The project's record of a `selva.scoring.TakeScore`."""
    return Score(
        agreement=take_score.agreement,
        leakage=take_score.leakage,
        score=take_score.score,
        checkpoint=take_score.checkpoint,
        leaked_into=take_score.leaked_into,
    )


def score_project(scorer: Scorer, rendered: Rendered, *, sounds: Sequence[int] | None = None) -> Project:
    """`rendered.project` with every take that has audio scored (of `sounds`; default: all of them).

    Leakage is measured against the take's negative prompt and every other
    sound's prompt, muted ones included: a take that plays another sound has
    leaked whether or not that sound is heard in this mix.
    """
    project = rendered.project
    prompts = [s.prompt for s in project.sounds]
    for k in range(len(project.sounds)) if sounds is None else sounds:
        sound = project.sounds[k]
        scored = [t for t in range(len(sound.takes)) if (k, t) in rendered.audio]
        if not scored:
            continue
        others = [p for j, p in enumerate(prompts) if j != k]
        results = scorer.score_takes(
            [rendered.audio[(k, t)] for t in scored],
            rendered.sample_rate,
            sound.prompt,
            others=others,
            negative_prompt=sound.negative_prompt,
        )
        takes = list(sound.takes)
        for t, result in zip(scored, results, strict=True):
            takes[t] = replace(takes[t], score=as_score(result))
        project = project.with_sound(k, replace(sound, takes=tuple(takes)))
    return project


def best_take(takes: Sequence[Any]) -> int | None:
    """The index of the best-scored take (the first of equals), or None when none is scored."""
    scored = [(t.score.score, -i) for i, t in enumerate(takes) if t.score is not None]
    return -max(scored)[1] if scored else None


def choose_best(project: Project, *, sounds: Sequence[int] | None = None) -> Project:
    """`project` with each of `sounds` (default: all) choosing its best-scored take; unscored ones stay."""
    for k in range(len(project.sounds)) if sounds is None else sounds:
        sound = project.sounds[k]
        best = best_take(sound.takes)
        if best is not None and best != sound.chosen:
            project = project.with_sound(k, replace(sound, chosen=best))
    return project


def remixed(rendered: Rendered, project: Project) -> Rendered:
    """`rendered` with `project`'s chosen takes (the same takes, another choice) in its mix."""
    samples = round(rendered.duration * rendered.sample_rate)
    mix, normalised_db = mix_project(project, rendered.audio, rendered.original, samples)
    return replace(rendered, project=project, mix=mix, normalised_db=normalised_db)


# -- what a user reads ---------------------------------------------------------------------------


def describe(score: Score) -> str:
    """'score 0.412 (agreement 0.455, leakage 0.086 into 'car engine')'."""
    leak = "no leakage measured" if score.leakage is None else (
        f"leakage {score.leakage:.3f} into {score.leaked_into!r}"
    )  # fmt: skip
    return f"score {score.score:.3f} (agreement {score.agreement:.3f}, {leak})"


def score_lines(project: Project, *, sounds: Sequence[int] | None = None) -> list[str]:
    """One line per scored take: the sound, the seed, its scores, and whether the mix uses it."""
    lines = []
    for k in range(len(project.sounds)) if sounds is None else sounds:
        sound = project.sounds[k]
        for t, take in enumerate(sound.takes):
            if take.score is not None:
                chosen = " (chosen)" if t == sound.chosen and len(sound.takes) > 1 else ""
                lines.append(f"{k + 1}. {sound.prompt!r} seed {take.seed}: {describe(take.score)}{chosen}")
    return lines


def score_line(score: Score) -> str:
    """A take card's line: 'match 0.31 · leak 0.12 · score 0.25' ('leak -' when nothing could leak)."""
    leak = "-" if score.leakage is None else f"{score.leakage:.2f}"
    return f"match {score.agreement:.2f} · leak {leak} · score {score.score:.2f}"


def takes_by_score(sound: Sound) -> list[tuple[int, Take, bool]]:
    """`sound`'s takes as (index, take, best): best-scored first, unscored after in their order.

    `best` marks the one best-scored take (the first of equals); the sound's
    `chosen` take is left as it is: the scores are a hint, the choice is the user's.
    """
    best = best_take(sound.takes)

    def key(i: int) -> tuple[bool, float, int]:
        score = sound.takes[i].score
        return (score is None, 0.0 if score is None else -score.score, i)

    return [(i, sound.takes[i], i == best) for i in sorted(range(len(sound.takes)), key=key)]


@dataclass(frozen=True)
class ScoredTake:
    """One scored take as a result reports it (the app's take cards, the API's and MCP's answers)."""

    sound: int  # the sound's index in the project (0 is the first)
    take: int  # the take's index in its sound
    seed: int  # the seed that makes this take again
    agreement: float
    leakage: float | None
    leaked_into: str | None
    score: float
    best: bool  # its sound's best-scored take (the first of equals)
    chosen: bool  # the take the mix uses (the user's choice; scoring never changes it)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values."""
        return asdict(self)


def scored_takes(project: Project) -> tuple[ScoredTake, ...]:
    """Every scored take of `project`, sound by sound in take order (none when nothing was scored)."""
    rows = []
    for k, sound in enumerate(project.sounds):
        best = best_take(sound.takes)
        for t, take in enumerate(sound.takes):
            if take.score is None:
                continue
            s = take.score
            numbers = (s.agreement, s.leakage, s.leaked_into, s.score)
            rows.append(ScoredTake(k, t, take.seed, *numbers, best=t == best, chosen=t == sound.chosen))
    return tuple(rows)


def scores_summary(project: Project) -> str:
    """The scores as lines under a result's info line (what an API or MCP caller reads); '' if none."""
    rows = scored_takes(project)
    if not rows:
        return ""
    several = len(project.sounds) > 1
    lines = ["Scores (CLAP: a hint for choosing, not a judgement of quality):"]
    for row in rows:
        who = f"sound {row.sound + 1} " if several else ""
        mark = " (best)" if row.best and len(project.sounds[row.sound].takes) > 1 else ""
        score = project.sounds[row.sound].takes[row.take].score
        assert score is not None  # `scored_takes` lists scored takes only
        lines.append(f"{who}seed {row.seed}: {score_line(score)}{mark}")
    return "\n".join(lines)


def scored_safely(
    rendered: Rendered, checkpoint: str | None, device: Any = None
) -> tuple[Rendered, str | None]:
    """`rendered` with its takes scored by the resident CLAP, or as it was and the reason it was not.

    Scoring is an extra: no failure of its (weights missing offline, out of memory)
    fails the generation; the reason comes back for the result to say.
    """
    from selva.scoring import load_scorer

    try:
        scorer = load_scorer(checkpoint, device=device)  # loaded on first use, then kept resident
        return replace(rendered, project=score_project(scorer, rendered)), None
    except Exception as exc:  # every failure is reported, none raised
        reason = str(exc) if isinstance(exc, spec.SelvaError) else f"{type(exc).__name__}: {exc}"
        return rendered, f"not scored: {reason}"


def scores_data(project: Project) -> dict[str, Any]:
    """The scores file's content: per sound its prompts and each scored take, the chosen one marked."""
    sounds = []
    for sound in project.sounds:
        takes = [
            {"seed": take.seed, "chosen": t == sound.chosen, **asdict(take.score)}
            for t, take in enumerate(sound.takes)
            if take.score is not None
        ]
        sounds.append({"prompt": sound.prompt, "negative_prompt": sound.negative_prompt, "takes": takes})
    return {
        "formula": f"score = agreement - {spec.LEAKAGE_WEIGHT:g} * max(0, leakage)",
        "note": "CLAP cosine similarities: a hint for choosing among takes, not a judgement of quality",
        "sounds": sounds,
    }


def write_scores(project: Project, path: str | Path) -> Path:
    """The scores as JSON at `path` (written then renamed: a fault leaves the old file or none)."""
    return write_json(path, scores_data(project))
