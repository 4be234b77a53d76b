"""A rendered project's takes scored with CLAP, the best take chosen, and the scores as a file.

    project = score_project(scorer, rendered)          # every take with audio gets its `Score`
    project = choose_best(project)                     # each sound's chosen take: its best-scored
    rendered = remixed(rendered, project)              # the mix of the newly chosen takes
    write_scores(project, out / "dog_scores.json")

A take is scored against its own prompt (agreement) and against its negative
prompt and the prompts of the project's OTHER sounds (leakage): SelVA picks one
source out of a scene, so a "dog barking" take that also matches "car engine"
followed the wrong one. `selva.scoring` holds the model and the formula; this
module only carries the numbers into the project. Scoring is an extra: callers
catch its errors and keep the generation (see `selva.scoring`).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from selva import spec
from selva.project import Project, Score
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
    path = Path(path)
    text = json.dumps(scores_data(project), indent=2, ensure_ascii=False) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
