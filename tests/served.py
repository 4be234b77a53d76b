"""A Gradio app served for a test on 127.0.0.1, started without gradio.launch's wall-clock limits.

`demo.launch()` gives its server 5 s to start and then checks the page with three-second
HTTP timeouts; on a loaded machine (30 busy processes on 2 cores) that check failed and
the launch raised "When localhost is not accessible, a shareable link must be created",
a setup error of whichever test came first. Here the same app is mounted with
`gr.mount_gradio_app` (the same routes, queue and MCP server) and run by uvicorn on a
port the OS picks, and the test waits for the server's own "started" flag.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

STARTUP_LIMIT_S = 300.0  # a bound for a stuck start, far above any loaded machine's


@contextmanager
def served(demo: Any, **options: Any) -> Iterator[str]:
    """Serve `demo` (with launch options such as allowed_paths, max_file_size, mcp_server); yields its URL."""
    import gradio as gr
    import uvicorn
    from fastapi import FastAPI

    app = gr.mount_gradio_app(FastAPI(), demo, path="/", server_name="127.0.0.1", **options)
    # A browser or MCP client may keep a connection open; uvicorn would wait for it without end.
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_level="warning", lifespan="on", timeout_graceful_shutdown=2
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="test-gradio-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + STARTUP_LIMIT_S
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)  # uvicorn sets a plain flag, with nothing to block on
    if not server.started:
        server.should_exit = True
        raise RuntimeError("the test's gradio server did not start; see its log above")
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.should_exit = True
        thread.join(STARTUP_LIMIT_S)
