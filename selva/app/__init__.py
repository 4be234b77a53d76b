"""SelVA Studio's Gradio app (UI only; every request runs through `selva.serving`).

Imports point one way: `launch` (command line) -> `page` (the Blocks) -> `handlers`,
`results`, `stems` (the request handlers, the result cards, the stems editor) ->
`selva.serving`; `mcp_compat` (a fix to gradio's MCP server) stands alone. Importing any
of them loads no model and no torch. Needs the `app` extra (gradio).
"""
