"""SelVA Studio's results (UI only): a card per candidate, this session's earlier results, kept takes.

Built into the Blocks by `selva.app.page.build_demo` and fed by `/generate`
(`selva.app.handlers.Studio.generate`), whose last output is the run's `GenerationResult`, kept
in a `gr.State`. Each candidate gets a card: its muxed video (none for sound from the prompt
alone) and an audio player with its waveform, both labelled with the candidate's own seed
(candidate k was drawn from seed + k), and two actions: Keep adds it to this session's kept list,
Use this seed puts its seed in the Seed field with one candidate, so Generate makes it again alone
(or a variation, with other settings). Earlier results of the session come back from a list.
Everything is per browser session and plays gradio's served copies of the files, which outlive
the short-lived ones `selva.serving` writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import gradio as gr

from selva.serving import MAX_CANDIDATES, GenerationResult

# Page-only events (no API endpoint). Gradio shows a handler's gr.Error, gr.Warning or gr.Info
# only for queued events; queued without a concurrency limit, they never wait for the GPU's slot.
PAGE_EVENT: dict[str, Any] = {"queue": False, "api_visibility": "private"}
PAGE_EVENT_TOASTS: dict[str, Any] = {
    "queue": True,
    "concurrency_limit": None,
    "show_progress": "hidden",
    "api_visibility": "private",
}

HISTORY_SIZE = 20  # earlier results kept per browser session (their files live ~1 h in gradio's cache)
KEPT_SIZE = 50  # a kept list longer than this is no longer a shortlist


@dataclass(frozen=True)
class Take:
    """One kept candidate: how the kept list names it, its seed and its files (mp4, FLAC, WAV)."""

    label: str
    seed: int
    files: tuple[str, ...]


@dataclass
class ResultsUI:
    """The result widgets of the page and the session state behind them."""

    area: gr.Column  # the cards, downloads, info and earlier results: shown for an example's result
    cards: list[gr.Column]  # one per candidate: video, audio, actions
    videos: list[gr.Video]
    audios: list[gr.Audio]
    actions: list[gr.Row]  # Keep and Use this seed, shown once the card holds a result
    keep: list[gr.Button]
    use_seed: list[gr.Button]
    downloads: gr.File
    info: gr.Textbox
    history: gr.Dropdown
    kept_list: gr.Markdown
    kept_files: gr.File
    current: gr.State  # the GenerationResult on show (with served copies once presented)
    past: gr.State  # earlier results, newest first
    kept: gr.State  # Takes, in the order they were kept

    @property
    def players(self) -> list[Any]:
        """What `show` updates, in its order."""
        return [*self.cards, *self.videos, *self.audios, *self.actions]


def candidate_label(result: GenerationResult, k: int) -> str:
    name = "Result" if result.count == 1 else f"Candidate {k + 1}"
    return f"{name} · seed {result.candidate_seed(k)}"


def take_label(result: GenerationResult, k: int) -> str:
    where = f"of {result.source}" if result.source else "from the prompt alone"
    return f"{result.prompt} · seed {result.candidate_seed(k)} · {result.duration:.2f} s {where}"


def show(result: GenerationResult | None, *, with_videos: bool) -> list[Any]:
    """Updates for `ResultsUI.players` that show `result` (None: empty cards).

    `with_videos` also sets the video players' files; right after a run they
    hold them already, and setting them again would reload them.
    """
    count = result.count if result is not None else 1
    cards = [gr.update(visible=k < count) for k in range(MAX_CANDIDATES)]
    videos, audios, actions = [], [], []
    for k in range(MAX_CANDIDATES):
        if result is None or k >= result.count:
            videos.append(gr.update(value=None, visible=True) if with_videos else gr.update())
            audios.append(gr.update(value=None))
            actions.append(gr.update(visible=False))
            continue
        label = candidate_label(result, k)
        video: dict[str, Any] = {"label": label, "visible": bool(result.videos)}
        if with_videos:
            video["value"] = result.videos[k] if result.videos else None
        videos.append(gr.update(**video))
        audios.append(gr.update(value=result.candidate_audio(k)[1], label=label))
        actions.append(gr.update(visible=True))
    return [*cards, *videos, *audios, *actions]


def served_copies(result: GenerationResult, served: Sequence[Any]) -> GenerationResult:
    """`result` with its files swapped for gradio's copies among `served` (matched by file name).

    Gradio keeps a file's name when it copies it into its cache; a file with no
    copy among `served` keeps its path.
    """
    by_name: dict[str, str] = {}
    for value in served:
        for path in value if isinstance(value, (list, tuple)) else [value]:
            if path:
                by_name[Path(path).name] = str(path)

    def swap(path: str) -> str:
        return by_name.get(Path(path).name, path)

    return replace(
        result, videos=tuple(map(swap, result.videos)), audio_files=tuple(map(swap, result.audio_files))
    )


def history_update(past: Sequence[GenerationResult], selected: int | None) -> dict[str, Any]:
    """The earlier-results list: newest first, numbered in the order they were made."""
    choices = [(f"{len(past) - k}. {r.label}", k) for k, r in enumerate(past)]
    return gr.update(choices=choices, value=selected if past else None)


def present(
    result: GenerationResult | None, past: list[GenerationResult] | None, *served: Any
) -> tuple[Any, ...]:
    """After a run: show `result` in the cards and put it first among this session's earlier results.

    `served` are the video players' values and the downloads list after the run:
    gradio's copies of the files, which the result refers to from now on.
    Returns the result, the earlier results, the list's update and `show`'s updates.
    """
    past = list(past or [])
    if result is not None:
        result = served_copies(result, served)
        past.insert(0, result)
        del past[HISTORY_SIZE:]
    return (result, past, history_update(past, 0), *show(result, with_videos=False))


def recall(past: list[GenerationResult] | None, index: int | None) -> tuple[Any, ...]:
    """Earlier result `index` (as `history_update` lists it) back on show.

    Returns it (the result on show), `show`'s updates, its audio files and its info line.
    """
    past = past or []
    known = index is not None and 0 <= int(index) < len(past)
    result = past[int(index)] if known else None
    files = list(result.audio_files) if result is not None else None
    return (result, *show(result, with_videos=True), files, result.info if result is not None else "")


def keep(result: GenerationResult | None, kept: list[Take] | None, k: int) -> tuple[Any, ...]:
    """Add candidate `k` of the result on show to the kept list; returns the list, its text and files."""
    if result is None or k >= result.count:
        gr.Warning("Nothing to keep here yet: generate first.")
        return list(kept or []), gr.update(), gr.update()
    return add_kept(kept, Take(take_label(result, k), result.candidate_seed(k), result.candidate_files(k)))


def add_kept(kept: list[Take] | None, take: Take) -> tuple[Any, ...]:
    """`take` added to the kept list (once, up to KEPT_SIZE); returns the list, its text and files."""
    kept = list(kept or [])
    if take in kept:
        gr.Info(f"Already kept: {take.label}")
    elif len(kept) >= KEPT_SIZE:
        gr.Warning(
            f"The kept list holds {KEPT_SIZE} takes: download them and reload the page for a new list."
        )
    else:
        kept.append(take)
    return kept, kept_text(kept), gr.update(value=[path for t in kept for path in t.files], visible=True)


def kept_text(kept: Sequence[Take]) -> str:
    if not kept:
        return "Nothing kept yet: press **Keep** under a take."
    lines = [f"{n}. {take.label}" for n, take in enumerate(kept, start=1)]
    return "\n".join(lines) + "\n\nThe files stay downloadable for about an hour."


def use_seed(result: GenerationResult | None, k: int) -> tuple[Any, Any]:
    """Candidate `k`'s seed and one candidate, for the Seed and Candidates fields."""
    if result is None or k >= result.count:
        return gr.update(), gr.update()
    return seed_alone(result.candidate_seed(k))


def seed_alone(seed: int) -> tuple[int, int]:
    """`seed` and one candidate, for the Seed and Candidates fields, with a note of what Generate does."""
    gr.Info(f"Seed {seed}, one candidate: Generate makes it again; change the prompt or settings to vary it.")
    return seed, 1


def results_column() -> ResultsUI:
    """The result cards (side by side, wrapping to one column on a phone), downloads, info, lists.

    The cards' area is hidden: `/generate`'s outputs for API callers, on the page it shows only an
    example's cached result; a page Generate shows its candidates as the workspace's takes.
    """
    cards, videos, audios, actions, keeps, seeds = [], [], [], [], [], []
    with gr.Column(visible=False, elem_id="candidates-area") as area:
        with gr.Row(equal_height=False, elem_id="candidates"):
            for k in range(MAX_CANDIDATES):
                # min_width: two cards side by side in the results column, one on a phone.
                with gr.Column(min_width=260, visible=k == 0, elem_id=f"candidate-{k + 1}") as card:
                    name = "Result" if k == 0 else f"Candidate {k + 1}"
                    videos.append(
                        gr.Video(label=name, interactive=False, elem_id=f"result-{k + 1}", height=240)
                    )
                    audios.append(
                        gr.Audio(label=name, type="filepath", interactive=False, elem_id=f"audio-{k + 1}")
                    )
                    with gr.Row(visible=False) as row:
                        keeps.append(gr.Button("Keep", size="sm", min_width=80, elem_id=f"keep-{k + 1}"))
                        seeds.append(
                            gr.Button("Use this seed", size="sm", min_width=80, elem_id=f"use-seed-{k + 1}")
                        )
                cards.append(card)
                actions.append(row)
        downloads = gr.File(
            label="Audio downloads (FLAC and WAV)",
            file_count="multiple",
            interactive=False,
            elem_id="downloads",
        )
        info = gr.Textbox(label="Info", interactive=False, lines=2, elem_id="info")
        history = gr.Dropdown(
            choices=[],
            value=None,
            label="Earlier results (this session)",
            interactive=True,
            elem_id="history",
            visible=False,  # the page's history is `selva.app.history`'s, which survives a reload
        )
    with gr.Accordion("Kept (this session)", open=True, elem_id="kept"):
        kept_list = gr.Markdown(kept_text([]), elem_id="kept-list")
        kept_files = gr.File(
            label="Kept files", file_count="multiple", interactive=False, visible=False, elem_id="kept-files"
        )
    return ResultsUI(
        area, cards, videos, audios, actions, keeps, seeds, downloads, info, history, kept_list, kept_files,
        current=gr.State(None), past=gr.State([]), kept=gr.State([]),
    )  # fmt: skip


def wire_results(ui: ResultsUI, run: Any, *, seed: gr.Number, num_samples: gr.Slider) -> None:
    """The results' events: after `run` (the `/generate` event), earlier results, Keep, Use this seed."""
    run.success(
        present,
        [ui.current, ui.past, *ui.videos, ui.downloads],
        [ui.current, ui.past, ui.history, *ui.players],
        show_progress="hidden",
        **PAGE_EVENT,
    )
    ui.history.input(
        recall, [ui.past, ui.history], [ui.current, *ui.players, ui.downloads, ui.info], **PAGE_EVENT
    )
    for k in range(MAX_CANDIDATES):
        ui.keep[k].click(
            lambda r, kept, k=k: keep(r, kept, k),
            [ui.current, ui.kept],
            [ui.kept, ui.kept_list, ui.kept_files],
            **PAGE_EVENT_TOASTS,
        )
        ui.use_seed[k].click(
            lambda r, k=k: use_seed(r, k), ui.current, [seed, num_samples], **PAGE_EVENT_TOASTS
        )
    # The user's own changes only: Use this seed sets one candidate, and the card it came from stays.
    num_samples.input(
        lambda n: [gr.update(visible=k < int(n)) for k in range(MAX_CANDIDATES)],
        num_samples,
        ui.cards,
        **PAGE_EVENT,
    )


def example_shown(seed: int) -> tuple[Any, ...]:
    """An example's cached result takes the first card; no Keep for it: it is no run of this session.

    Returns the result on show (none), the cards' area (shown) and `ResultsUI.players`' updates.
    """
    label = f"Example · seed {seed}"
    cards = [gr.update(visible=k == 0) for k in range(MAX_CANDIDATES)]
    videos = [gr.update(label=label, visible=True) if k == 0 else gr.update() for k in range(MAX_CANDIDATES)]
    audios = [gr.update(label=label) if k == 0 else gr.update() for k in range(MAX_CANDIDATES)]
    actions = [gr.update(visible=False)] * MAX_CANDIDATES
    return (None, gr.update(visible=True), *cards, *videos, *audios, *actions)
