"""SelVA nodes for ComfyUI: text-conditioned video-to-audio (load a model, extract sync features, sample).

ComfyUI imports this folder from custom_nodes/ and reads `NODE_CLASS_MAPPINGS`
and `NODE_DISPLAY_NAME_MAPPINGS`. The models live in the `selva` package,
installed into ComfyUI's Python with `pip install -e /path/to/selva-studio`
(see the README's ComfyUI section).
"""

import sys
from pathlib import Path

try:
    import selva  # noqa: F401
except ImportError:
    # custom_nodes/ offers no way to declare a dependency, so a pack linked in from a checkout
    # without `pip install -e` would fail to load; the checkout holding it has the package.
    _checkout = Path(__file__).resolve().parent.parent
    if (_checkout / "selva" / "__init__.py").is_file():
        sys.path.append(str(_checkout))

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
