"""The one loader: `LoadOptions` in, a ready `SelvaPipeline` out.

The app's resident pipeline, the command line and its batches, the Ray actors,
the ComfyUI loader and the benchmarks all load through `load_pipeline`, so a
loading choice (a precision, offloading, compiling) means the same everywhere.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from selva.spec import LoadOptions

if TYPE_CHECKING:
    from selva.pipeline import SelvaPipeline


def load_pipeline(options: LoadOptions) -> SelvaPipeline:
    """Locate (download if needed), verify and load every component `options` names."""
    from selva.pipeline import SelvaPipeline

    options = options.checked()
    extra = {} if options.window_overlap is None else {"window_overlap": options.window_overlap}
    return SelvaPipeline.from_pretrained(
        options.variant,
        device=options.device,
        dtype=None if options.precision == "auto" else options.precision,
        offload=options.offload,
        weights_dir=options.weights_dir,
        revision=options.revision,
        max_duration=options.max_duration,
        compile=options.compile,
        **extra,
    )
