"""SelVA Studio's command line: parse the options, launch the page, load the models behind it.

    python app.py [--share] [--server-name HOST] [--port N] [--variant NAME] [--device DEV]
                  [--precision P] [--offload O] [--weights-dir DIR] [--max-duration SEC] [--mcp]

(`selva-app` is the same command once the package is installed.) On Hugging Face ZeroGPU the
model call is wrapped with `spaces.GPU` (`selva.app.handlers`), and `--compile` compiles the
generator ahead of time with the platform's helpers (`selva.zerogpu`) instead of `torch.compile`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from selva import spec
from selva.app.mcp_compat import fix_gradio_mcp_results
from selva.app.page import EXAMPLES_DIR, build_demo
from selva.cli_options import model_options
from selva.serving import OutputStore, PipelineSlot
from selva.spec import SelvaError

MAX_UPLOAD = "500mb"  # a minute of 4K phone video; longer clips should be cut first


def launch_options(*, mcp: bool = False) -> dict[str, Any]:
    """What `launch` needs besides host and port.

    Only the examples folder is served from disk (outputs live in the temp dir,
    which gradio allows); uploads are capped well above any clip SelVA can use.
    `mcp` also serves the named endpoints as MCP tools at /gradio_api/mcp/ (their
    docstrings describe them to the model calling them).
    """
    options: dict[str, Any] = {"allowed_paths": [str(EXAMPLES_DIR)], "max_file_size": MAX_UPLOAD}
    if mcp:
        fix_gradio_mcp_results()
        options["mcp_server"] = True
    return options


def build_parser() -> argparse.ArgumentParser:
    from selva.cli import OFFLOADS, PRECISIONS

    parser = argparse.ArgumentParser(
        description="SelVA Studio: the web app. The models load once, in the background at start-up.",
    )
    parser.add_argument("--share", action="store_true", help="also serve through a public gradio.live link")
    parser.add_argument(
        "--server-name", metavar="HOST", help="interface to listen on (default: 127.0.0.1; 0.0.0.0 for all)"
    )
    parser.add_argument("--port", type=int, metavar="N", help="default: 7860, or the next free port")
    parser.add_argument(
        "--variant", default=spec.DEFAULT_VARIANT, metavar="NAME", help="default: %(default)s"
    )
    parser.add_argument("--device", metavar="DEV", help="cuda, cuda:1, mps or cpu (default: the best one)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto", help="default: auto")
    parser.add_argument("--offload", choices=OFFLOADS, default="auto", help="default: auto")
    parser.add_argument(
        "--weights-dir", type=Path, metavar="DIR", help="local weights folder (default: HF cache)"
    )
    parser.add_argument(
        "--revision", metavar="REV", help="branch, tag or commit of jnwnlee/SelVA to use (default: main)"
    )
    parser.add_argument(
        "--max-duration", type=float, metavar="SEC", help="longest span one request may ask for"
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the networks (fastest on CUDA)")
    parser.add_argument(
        "--lazy-load", action="store_true", help="load the models on the first request instead of at start-up"
    )
    parser.add_argument(
        "--mcp",
        action="store_true",
        help="also serve the generate and stems endpoints as MCP tools (needs gradio[mcp])",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the app until it is stopped; the exit code (2: a bad option).

    The model loads in the background (unless `--lazy-load`): the page serves at once and
    shows the weights' download and load, or the error that stopped them.
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from selva import zerogpu  # torch comes with it: imported once the app runs, not with the module

    compiling = zerogpu.compile_mode(args.compile)  # "aot" on ZeroGPU, "jit" elsewhere, or "eager"
    slot = PipelineSlot(args.variant, **{**model_options(args), "compile": compiling == "jit"})
    try:  # a bad option stops the app before it serves; weights are the page's to report
        from selva.variants import known_variants

        spec.check_variant(args.variant, known_variants())
    except SelvaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2  # the exit code of the `selva` command
    OutputStore.remove_on_exit()  # SIGTERM (a service stop) as well as Ctrl-C removes the outputs
    loader = None
    if not args.lazy_load:
        # The page comes up at once and shows the download and load (or why they failed);
        # requests wait for the slot's lock meanwhile.
        print(f"Loading {args.variant} in the background (downloads the weights on first run)...", flush=True)
        if compiling == "aot":
            loader = zerogpu.load_and_compile_in_background(slot, args.variant)
        else:
            loader = slot.load_in_background(args.variant)
    demo = build_demo(slot)
    demo.loader = loader  # for tests: the loading thread, or None
    demo.launch(
        share=args.share,
        server_name=args.server_name,
        server_port=args.port,
        **launch_options(mcp=args.mcp),
    )
    return 0
