"""The memory server: an HTTP API (FastAPI), API keys, and an MCP server over the facade.

``memory.server.app.create_app`` builds the ASGI app, ``memory.server.auth`` keeps the keys,
``memory.server.mcp`` the MCP tools, ``memory.server.cli`` the ``pmem serve|keys|mcp`` commands.
Nothing is imported here, so ``pmem --help`` does not load FastAPI.
"""
