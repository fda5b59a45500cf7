"""An MCP stdio server and an agent that uses its tools; the server stops with the agent.

.venv/bin/python examples/runtimes/mcp_server.py          # the agent (starts this file as the server)
.venv/bin/python examples/runtimes/mcp_server.py serve    # the server alone (stdio)
"""

from __future__ import annotations

import sys


def serve() -> None:
    from mcp.server.fastmcp import FastMCP

    app = FastMCP("units", log_level="WARNING")

    @app.tool()
    def celsius_to_fahrenheit(celsius: float) -> float:
        """Converts degrees Celsius to Fahrenheit."""
        return celsius * 9 / 5 + 32

    app.run()


def main() -> None:
    from async_task_system import ScriptedModel, create_async_agent
    from async_task_system.runtimes import McpServer

    server = McpServer(sys.executable, [__file__, "serve"])
    model = ScriptedModel(
        [
            "<code>\n"
            "t = submit_task('tool', 'celsius_to_fahrenheit', {'celsius': 100})\n"
            "wait_for_tasks([t], max_wait_time=30)\n"
            "final_answer(get_task_results([t])[t])\n"
            "</code>"
        ]
    )
    agent = create_async_agent(tools=server.tools, model=model, verbosity_level=0)
    server.attach(agent)
    with agent:
        print("100 °C =", agent.run("Convert 100 °C to Fahrenheit."))
    print("server running after the agent:", server.running)


if __name__ == "__main__":
    serve() if sys.argv[1:] == ["serve"] else main()
