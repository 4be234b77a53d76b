"""A fix to gradio's MCP server, applied when the app serves its endpoints as MCP tools (`--mcp`).

Kept apart from the page: it patches gradio's internals, and goes once a fixed gradio is required.
"""

from __future__ import annotations

from typing import Any


def fix_gradio_mcp_results() -> None:
    """Make gradio's MCP tools return every output of a multi-output endpoint (idempotent).

    Without a progress token in the call (many MCP clients send none), gradio's MCP
    server (`GradioMCPServer._execute_tool_without_progress`, gradio 6.x) hands back
    `[job.result()]`: for `/generate` and `/stems`, whose results are tuples of
    several outputs, the tool then fails ("pop index out of range", as it drops the
    gr.State output by position) instead of listing the files. The call with a
    progress token gets the outputs as a list already; this makes the other path do
    the same and leaves a list that a fixed gradio returns untouched.
    """
    try:
        from gradio.mcp import GradioMCPServer
    except ImportError:  # a gradio without MCP support: nothing to fix
        return
    original = getattr(GradioMCPServer, "_execute_tool_without_progress", None)
    if original is None or getattr(original, "selva_fixed", False):
        return

    async def execute(self: Any, job: Any) -> list[Any]:
        data = await original(self, job)
        # gradio_client gives a multi-output result as a tuple (one output comes alone, never as one).
        if isinstance(data, list) and len(data) == 1 and isinstance(data[0], tuple):
            return list(data[0])
        return data

    execute.selva_fixed = True  # type: ignore[attr-defined]
    GradioMCPServer._execute_tool_without_progress = execute
