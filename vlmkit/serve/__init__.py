"""HTTP serving: OpenAI- and Anthropic-compatible endpoints, dynamic batching, limits, a web page.

Needs the `serve` extra (fastapi, uvicorn). Start it with `vlmkit serve --model DIR`,
or build the app yourself with `vlmkit.serve.app.create_app(vlm)`.
"""
