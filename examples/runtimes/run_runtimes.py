"""Tools in Python, JavaScript, C and WebAssembly, used by one agent; offline by default.

    .venv/bin/python examples/runtimes/run_runtimes.py

Loads the manifests in tools/ (JavaScript and Python text tools, a WebAssembly Fibonacci), adds a
native tool declared in Python (built from tools/greet.c when gcc is installed), calls one
runtime directly through the RuntimeManager, then lets a scripted agent call the tools directly
and in the background. Set API_KEY / BASE_URL / MODEL_ID in .env and pass --llm for a real model.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from async_task_system import ScriptedModel, create_async_agent
from async_task_system.runtimes import RuntimeManager, load_tools, runtime_tool
from async_task_system.sandbox import RunLimits

HERE = Path(__file__).resolve().parent
STEPS = [
    "<code>\n"
    "n = count_words(text='tools in many languages')\n"
    "ids = [submit_task('tool', 'fibonacci', {'n': 25}), submit_task('tool', 'reverse_text', {'text': 'agent'}),\n"
    "       submit_task('tool', 'title_case', {'text': 'one manager'})]\n"
    "wait_for_tasks(ids, max_wait_time=30)\n"
    "results = get_task_results(ids)\n"
    "final_answer({'words': n, 'background': [results[i] for i in ids]})\n"
    "</code>"
]


def main() -> None:
    runtimes = RuntimeManager(RunLimits(timeout=20))  # Node needs memory_mb >= 1024 (address space)
    print("runtimes here:", {name: reason or "ok" for name, reason in runtimes.available().items()})
    tools = load_tools(HERE / "tools", runtimes)
    if shutil.which("gcc"):
        binary = Path(tempfile.mkdtemp()) / "greet"
        subprocess.run(["gcc", "-O2", "-o", str(binary), str(HERE / "tools" / "greet.c")], check=True)
        greet = runtime_tool(
            "greet", runtime="native", entry=binary, description="Greets someone.",
            inputs={"name": "string"}, output_type="string", runtimes=runtimes,
        )  # fmt: skip
        tools.append(greet)
        print("native:", greet(name="runtimes"))
    result = asyncio.run(runtimes.execute("wasm", str(HERE / "tools" / "math.wat"), "fib", {"n": 30}))
    print("wasm fib(30):", result.result, f"in {result.duration * 1000:.1f} ms")
    model = None if "--llm" in sys.argv else ScriptedModel(STEPS)
    with create_async_agent(tools=tools, model=model, verbosity_level=0) as agent:
        print("agent:", agent.run("Count the words of 'tools in many languages', then fib(25), and more."))
    runtimes.close()


if __name__ == "__main__":
    main()
