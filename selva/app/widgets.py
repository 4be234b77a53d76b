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
