"""SelVA Studio: text-conditioned selective video-to-audio generation."""

from selva.spec import InputError, MediaError, SelvaError, WeightsError

__version__ = "0.1.0"

__all__ = ["InputError", "MediaError", "SelvaError", "WeightsError", "__version__"]
