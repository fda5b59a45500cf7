"""Tool programs for the runtime tests, built in the test's temporary directory: a Node.js
script, a Python tool file, a C program compiled with gcc, WebAssembly modules from WAT text.

A program that is missing on this machine skips its tests with the reason; under ``CI=true``
(where Node.js and gcc are installed) it fails instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

JS_TOOL = r"""
let data = '';
process.stdin.on('data', (chunk) => (data += chunk));
process.stdin.on('end', () => {
  const { command, parameters } = JSON.parse(data);
  const reply = (value) => console.log(JSON.stringify(value));
  switch (command) {
    case 'add':
      console.error('adding');
      return reply({ status: 'success', result: parameters.a + parameters.b });
    case 'words':
      return reply({ count: parameters.text.split(/\s+/).filter(Boolean).length });
    case 'bad_json':
      return console.log('this is not json');
    case 'throw':
      throw new Error('boom from js');
    case 'refuse':
      return reply({ status: 'error', error: 'refused: ' + parameters.why });
    case 'flood': {
      const line = 'x'.repeat(65536);
      for (;;) require('fs').writeSync(1, line); // blocks on a full pipe, as a real flood does
    }
    case 'hang':
      return setInterval(() => {}, 1000);
    case 'env':
      return reply(Object.keys(process.env).sort());
    case 'read':
      return reply(require('fs').readFileSync(parameters.path, 'utf8').length);
    default:
      return reply({ status: 'error', error: 'unknown command ' + command });
  }
});
"""

PY_TOOL = r"""
import asyncio


def add(a, b):
    print("this goes to stderr")
    return a + b


async def shout(text):
    await asyncio.sleep(0)
    return text.upper()


def boom():
    raise ValueError("no luck")


def _hidden():
    return 1


if __name__ == "__main__":
    raise SystemExit("must not run")
"""

C_TOOL = r"""
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    const char *command = argc > 1 ? argv[1] : "";
    if (strcmp(command, "fail") == 0) {
        fprintf(stderr, "something went wrong\n");
        return 3;
    }
    if (strcmp(command, "hello") == 0) {
        printf("hello %s\n", argc > 3 ? argv[3] : "nobody");
        return 0;
    }
    if (strcmp(command, "flood") == 0) {
        char buffer[65536];
        memset(buffer, 'y', sizeof buffer);
        for (;;) fwrite(buffer, 1, sizeof buffer, stdout);
    }
    if (strcmp(command, "sleep") == 0) {
        sleep(60);
        return 0;
    }
    /* "args": the arguments after the command as a JSON array (test values have no quotes) */
    printf("[");
    for (int i = 2; i < argc; i++) printf("%s\"%s\"", i > 2 ? "," : "", argv[i]);
    printf("]\n");
    return 0;
}
"""

# A WASI command that copies stdin to stdout: the request comes back as the result.
WAT_ECHO = """
(module
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 1024))
    (i32.store (i32.const 4) (i32.const 60000))
    (drop (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 16)))
    (i32.store (i32.const 4) (i32.load (i32.const 16)))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 20)))))
"""

# Exported functions: arithmetic, a trap, an endless loop, a memory hog, an output flood.
WAT_KERNELS = """
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "add") (param i32 i32) (result i32) (i32.add (local.get 0) (local.get 1)))
  (func $fib (export "fib") (param $n i32) (result i32)
    (if (result i32) (i32.lt_u (local.get $n) (i32.const 2))
      (then (local.get $n))
      (else (i32.add (call $fib (i32.sub (local.get $n) (i32.const 1)))
                     (call $fib (i32.sub (local.get $n) (i32.const 2)))))))
  (func (export "crash") (unreachable))
  (func (export "spin") (loop $forever (br $forever)))
  (func (export "grow") (result i32)
    (if (i32.eq (memory.grow (i32.const 4096)) (i32.const -1)) (then unreachable))
    (i32.const 0))
  (func (export "flood")
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 4096))
    (loop $forever
      (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
      (br $forever))))
"""


def require(program: str) -> str:
    """The program's path; skips the test when it is missing (fails under CI=true)."""
    path = shutil.which(program)
    if path is None:
        reason = f"{program} is not installed"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI=true: it must be)")
        pytest.skip(reason)
    return path


def require_module(name: str) -> None:
    """Skip when a Python package is missing (fail under CI=true)."""
    try:
        __import__(name)
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the {name} package is not installed (CI=true: it must be)")
        pytest.skip(f"the {name} package is not installed (pip install '.[runtimes]')")


def write(directory: Path, name: str, text: str) -> str:
    path = directory / name
    path.write_text(text)
    return str(path)


def compile_c(directory: Path, source: str = C_TOOL, name: str = "ctool") -> str:
    gcc = require("gcc")
    src = write(directory, f"{name}.c", source)
    binary = str(directory / name)
    subprocess.run([gcc, "-O1", "-o", binary, src], check=True, capture_output=True)
    return binary


# A small MCP stdio server; it writes its pid to $PID_FILE so tests can see it stop.
MCP_SERVER = '''
import os

from mcp.server.fastmcp import FastMCP

app = FastMCP("calc", log_level="WARNING")


@app.tool()
def add(a: int, b: int) -> int:
    """Adds two integers."""
    return a + b


@app.tool()
def shout(text: str) -> str:
    """Upper-cases a text."""
    return text.upper()


if __name__ == "__main__":
    if os.environ.get("PID_FILE"):
        with open(os.environ["PID_FILE"], "w") as handle:
            handle.write(str(os.getpid()))
    app.run()
'''
