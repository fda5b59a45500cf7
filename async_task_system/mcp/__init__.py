"""The task manager as an MCP server (``async-agent mcp``, ``serve_mcp(manager)``).

Layer 4, beside the other subsystems: it builds on the core and the agents' task tools and never
imports the platform or another subsystem. Needs the ``mcp`` extra (the official SDK, 1.x).
Inside this package ``import mcp`` is the SDK (absolute imports), never this package.
"""

from __future__ import annotations

from .server import McpTaskServer
from .transports import http_app, serve_mcp

__all__ = ["McpTaskServer", "serve_mcp", "http_app"]
