"""Fixes to gradio's MCP server, applied when the app serves its endpoints as MCP tools (`--mcp`).

- `fix_gradio_mcp_results`: every output of a multi-output endpoint comes back (a gradio 6 bug);
- `answer_oversized_requests`: a request over the MCP limit (a video as a long data: URL) gets a
  message the client shows, instead of a bare HTTP 413 (`OversizedRequests`).

Kept apart from the page: they patch gradio's internals, and go once a fixed gradio is required.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from selva import spec

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def fix_gradio_mcp_results() -> None:
    """Make gradio's MCP tools return every output of a multi-output endpoint (idempotent).

    Without a progress token in the call (many MCP clients send none), gradio's MCP
    server (`GradioMCPServer._execute_tool_without_progress`, gradio 6.x) hands back
    `[job.result()]`: for `/generate` and `/stems`, whose results are tuples of
    several outputs, the tool then fails ("pop index out of range", as it drops the
    gr.State output by position) instead of listing the files. The call with a
    progress token gets the outputs as a list already; this makes the other path do
    the same and leaves a list that a fixed gradio returns untouched.

    It also applies `answer_oversized_requests`: `--mcp` gets both fixes.
    """
    answer_oversized_requests()
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


def answer_oversized_requests() -> None:
    """Put `OversizedRequests` in front of gradio's MCP endpoint (streamable HTTP; idempotent).

    The `mcp` package answers a request body over 4 MiB with a bare HTTP 413 "Request body
    too large", which MCP clients raise as a transport failure (the Python client: an
    ExceptionGroup around an HTTPStatusError) with nothing about what to do. gradio builds
    that endpoint when it launches (`GradioMCPServer.__init__`) and offers no way to raise
    the limit, so this wraps the endpoint it builds.
    """
    try:
        from gradio.mcp import GradioMCPServer
    except ImportError:  # a gradio without MCP support: no endpoint to wrap
        return
    init = GradioMCPServer.__init__
    if getattr(init, "selva_fixed", False):
        return

    @functools.wraps(init)
    def build(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        endpoint = getattr(self, "handle_streamable_http", None)
        if endpoint is not None:  # mounted by gradio's launch after this
            self.handle_streamable_http = OversizedRequests(endpoint)

    build.selva_fixed = True  # type: ignore[attr-defined]
    GradioMCPServer.__init__ = build


def too_large_message(size: int, limit: int = spec.MCP_MAX_REQUEST_BYTES) -> str:
    """What a client reads when its request is over the MCP limit: the limit, and what to do instead."""
    video = limit * 3 / 4 / 1e6  # base64 makes 4 characters of every 3 bytes
    return (
        f"This MCP request is {size / 1e6:.1f} MB; the server takes at most {limit / 2**20:g} MiB per "
        f"request, about {video:.0f} MB of video sent as a data: URL. Send a larger video as a public "
        "http(s) URL or as the path of a file on the server, or upload it through the HTTP API "
        "(gradio_client: handle_file(path)) and call /generate or /stems there."
    )


# An oversized body up to this size is parsed whole for its id and method; past it only its first and
# last 64 KiB are kept (its id leads it or ends it: the Python SDK writes method, params, jsonrpc, id).
_PARSED_BYTES = 32 * 1024 * 1024
_END_BYTES = 64 * 1024
_VALUE = rb'(-?\d+|"(?:[^"\\]|\\.)*")'
_ID_FIRST = re.compile(rb'"id"\s*:\s*' + _VALUE)
_ID_LAST = re.compile(rb'"id"\s*:\s*' + _VALUE + rb'\s*(?:,\s*"jsonrpc"\s*:\s*"2\.0"\s*)?\}\s*$')
_METHOD = re.compile(rb'"method"\s*:\s*"([^"\\]*)"')


class OversizedRequests:
    """An ASGI wrapper of an MCP endpoint: a POST over `limit` bytes is answered with a clear message.

    The answer is the JSON-RPC reply to the request (the client matches it by the request's
    id): for a tool call, a tool result with `isError` and the message (what agents read),
    for any other method a JSON-RPC error with it. The body is read through to its end; past
    32 MiB only its ends are kept, so a huge request costs no memory. Requests within
    `limit` reach the endpoint unchanged.
    """

    def __init__(self, app: ASGIApp, limit: int = spec.MCP_MAX_REQUEST_BYTES):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        body, end, size, trailing = bytearray(), b"", 0, []
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: let the endpoint see it
                trailing.append(message)
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size <= _PARSED_BYTES:
                body.extend(chunk)
            else:
                if len(body) > _END_BYTES:
                    end = bytes(body[-_END_BYTES:])
                    del body[_END_BYTES:]  # the start stays
                end = (end + chunk)[-_END_BYTES:]
            if not message.get("more_body", False):
                break
        if size > self.limit:
            if not trailing:  # nobody to answer once the client has gone
                await _send_json(send, oversized_reply(bytes(body), size, self.limit, end=end))
            return
        replay = [{"type": "http.request", "body": bytes(body), "more_body": False}, *trailing]

        async def replayed() -> Message:
            return replay.pop(0) if replay else await receive()

        await self.app(scope, replayed, send)


def oversized_reply(
    body: bytes, size: int, limit: int = spec.MCP_MAX_REQUEST_BYTES, *, end: bytes = b""
) -> dict[str, Any]:
    """The JSON-RPC reply to an oversized request: `body` whole, or its start and its `end`."""
    text = too_large_message(size, limit)
    request_id, method = _id_and_method(body, end)
    if request_id is not None and method == "tools/call":
        result = {"content": [{"type": "text", "text": text}], "isError": True}
        return {"jsonrpc": "2.0", "id": request_id, "result": result}
    return {"jsonrpc": "2.0", "id": request_id, "error": {"code": -32600, "message": text}}


def _id_and_method(body: bytes, end: bytes) -> tuple[Any, str | None]:
    if not end:  # the whole body
        try:
            data = json.loads(body)
        except ValueError:
            return None, None
        if not isinstance(data, dict):
            return None, None
        method = data.get("method")
        return data.get("id"), method if isinstance(method, str) else None
    # Only the ends: an "id" inside the arguments is not the request's, so look outside "params".
    head = body.split(b'"params"', 1)[0]
    found = _ID_FIRST.search(head) or _ID_LAST.search(end)
    method = _METHOD.search(head)
    return (json.loads(found.group(1)) if found else None), (method.group(1).decode() if method else None)


async def _send_json(send: Send, data: dict[str, Any]) -> None:
    body = json.dumps(data).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
