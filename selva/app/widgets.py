"""Widgets the page builds in several places, each from the spec's own limits and labels."""

from __future__ import annotations

from typing import Any

import gradio as gr

from selva import spec


def limit_slider(limit: spec.Limit, *, step: float, info: str | None = None, **options: Any) -> gr.Slider:
    """A slider over one of the spec's limits: its range, default and label."""
    return gr.Slider(
        limit.minimum, limit.maximum, value=limit.default, step=step, label=limit.label, info=info, **options
    )


def sound_prompts(label: str, placeholder: str, elem_id: str, *, value: str | None = "") -> tuple[Any, Any]:
    """A sound's prompt and negative prompt side by side (`elem_id` for the prompt, `-negative` too)."""
    negative_id = elem_id.replace("prompt", "negative")
    prompt = gr.Textbox(value, label=label, placeholder=placeholder, max_lines=2, scale=2, min_width=200,
                        elem_id=elem_id)  # fmt: skip
    negative = gr.Textbox("", label="Negative", max_lines=2, scale=1, min_width=140, elem_id=negative_id)
    return prompt, negative


def delivery_settings() -> tuple[gr.Dropdown, gr.Dropdown]:
    """The delivered files' sample rate and the mix's loudness target (`sample-rate`, `loudness`)."""
    rate = gr.Dropdown(
        [(f"{spec.DEFAULT_OUTPUT_RATE / 1000:g} kHz (video's usual rate)", spec.DEFAULT_OUTPUT_RATE),
         ("The model's own rate", spec.OUTPUT_RATE_MODEL)],
        value=spec.DEFAULT_OUTPUT_RATE,
        label="Output sample rate",
        info="of the mp4s, FLACs and WAVs; the takes are resampled with FFmpeg's resampler",
        min_width=160,
        elem_id="sample-rate",
    )  # fmt: skip
    default = next(
        name for name, lufs in spec.LOUDNESS_TARGETS.items() if lufs == spec.DEFAULT_LOUDNESS_TARGET
    )
    loudness = gr.Dropdown(
        list(spec.LOUDNESS_TARGETS),
        value=default,
        label="Loudness",
        info="the mix's integrated loudness, true peak at most -1 dBTP; the info line says what was measured",
        min_width=160,
        elem_id="loudness",
    )
    return rate, loudness
