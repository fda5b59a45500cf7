"""The JSON-lines TCP server (seed 003) with real TCP clients on loopback.

Every test talks to a real AgentServer over a socket; the agents are real smolagents CodeAgents /
AsyncAgents driven by a ScriptedModel (see tests/clients/testagents.py for the task mini-language).
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import queue
import socket
import threading
import time

import pytest
from clients import testagents as ta
from clients.pyclient import AgentCLIClient, LineClient, send_request
from PIL import Image
from smolagents import tool

from async_task_system.server import AgentServer, RemoteRequest, RemoteResponse, ResponseContent
from async_task_system.server import protocol as p
from async_task_system.server.agents import DEFAULT_SYSTEM_PROMPT


@pytest.fixture(autouse=True)
def _reset_agents():
    ta.reset()
    yield
    ta.RELEASE.set()


class Running:
    """A server in a background thread plus a queue of finished-request records."""

    def __init__(self, factory, **options) -> None:
        self.server = AgentServer(factory, **options)
        self.records: queue.Queue = queue.Queue()
        self.server.add_listener(self.records.put)
        self.thread = self.server.start_in_thread()
        self.port = self.thread.port

    def record(self, request_id: str, timeout: float = 20.0):
        deadline = time.monotonic() + timeout
        while True:
            record = self.records.get(timeout=max(0.01, deadline - time.monotonic()))
            if record.request_id == request_id:
                return record

    def client(self) -> LineClient:
        return LineClient(self.port)

    def stop(self) -> None:
        self.thread.stop()


@pytest.fixture
def serve_factory():
    running: list[Running] = []

    def start(factory=None, **options) -> Running:
        r = Running(factory or ta.async_agent_factory(), **options)
        running.append(r)
        return r

    yield start
    ta.RELEASE.set()
    for r in running:
        r.stop()


@pytest.fixture
def srv(serve_factory) -> Running:
    return serve_factory()


def png(width: int, height: int) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# ------------------------------------------------------------------------------------ protocol


SEED_REQUESTS = [
    {
        "request_id": "chat_001",
        "input": {"Text": "你好，请介绍一下 Rust 语言的特点"},
        "stream": False,
        "use_tools": True,
    },
    {
        "request_id": "stream_001",
        "input": {"Text": "写一个简单的 Rust Hello World 程序"},
        "stream": True,
        "use_tools": False,
    },
    {
        "request_id": "config_001",
        "input": {"Text": "分析这个项目的代码结构"},
        "config": {"max_tokens": 1000, "ask_before_tool_execution": False, "prompt": "你是一个代码分析专家"},
        "stream": False,
        "use_tools": True,
    },
]


def test_seed_examples_validate_and_responses_have_the_seed_shape():
    for raw in SEED_REQUESTS:
        request = RemoteRequest.model_validate(raw)
        assert request.request_id == raw["request_id"]
        assert request.input.kind == "Text"
    every_input = {
        "Multi": [
            {"Text": "t"},
            {"Image": {"data": png(2, 2), "mime_type": "image/png"}},
            {"Instruction": {"command": "add", "parameters": {"a": 1, "b": 2}}},
            {"File": {"filename": "a.txt", "content_type": "text/plain", "data": b64("hi")}},
            {"Multi": [{"Text": "nested"}]},
        ]
    }
    request = RemoteRequest.model_validate({"request_id": "x", "input": every_input})
    assert [leaf.kind for leaf in request.input.leaves()] == ["Text", "Image", "Instruction", "File", "Text"]
    assert request.input.model_dump(mode="json") == every_input

    response = RemoteResponse(
        request_id="r",
        response=ResponseContent(
            Multi=[
                ResponseContent(Text="a"),
                ResponseContent(Stream=["a", "b"]),
                ResponseContent(ToolCall={"name": "t", "arguments": {"x": 1}}),
                ResponseContent(ToolResult={"name": "t", "result": {"y": 2}}),
            ]
        ),
        token_usage={"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
    )
    line = p.encode_response(response)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == {
        "request_id": "r",
        "response": {
            "Multi": [
                {"Text": "a"},
                {"Stream": ["a", "b"]},
                {"ToolCall": {"name": "t", "arguments": {"x": 1}}},
                {"ToolResult": {"name": "t", "result": {"y": 2}}},
            ]
        },
        "error": None,
        "token_usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
    }


def test_every_protocol_field_is_documented():
    models = [
        p.ImageInput,
        p.InstructionInput,
        p.FileInput,
        p.InputType,
        p.RequestConfig,
        p.RemoteRequest,
        p.ToolCallContent,
        p.ToolResultContent,
        p.ResponseContent,
        p.TokenUsage,
        p.RemoteResponse,
    ]
    for model in models:
        assert model.__doc__, model
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"request_id": "a"}, "input: Field required"),
        ({"request_id": "a", "input": {"Txt": "x"}}, "input.Txt: Extra inputs are not permitted"),
        ({"request_id": "a", "input": {"Text": "x", "Image": {"data": ""}}}, "exactly one of the keys"),
        ({"request_id": "a", "input": {"Image": {"data": "%%%"}}}, "not valid base64"),
        ({"request_id": "a", "input": {"Text": "x"}, "config": {"max_token": 5}}, "config.max_token"),
        ({"request_id": "a", "input": {"Text": "x"}, "config": {"max_tokens": 0}}, "config.max_tokens"),
        ([1, 2], "expected a JSON object"),
    ],
)
def test_invalid_requests_name_the_problem(raw, expected):
    with pytest.raises(p.RequestError) as info:
        p.parse_request(raw)
    assert info.value.code is p.ErrorCode.PARSE_ERROR
    assert expected in info.value.message


# ------------------------------------------------------------------------ seed-shaped clients


def test_seed_quick_start_client_one_recv(srv):
    response = send_request(SEED_REQUESTS[0], port=srv.port)
    assert response["request_id"] == "chat_001"
    assert response["response"] == {"Text": "echo: 你好，请介绍一下 Rust 语言的特点"}
    assert response["error"] is None
    usage = response["token_usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0


def test_seed_client_class_many_requests_on_one_connection(srv):
    client = AgentCLIClient("127.0.0.1", srv.port)
    try:
        replies = [client.send_request(r) for r in SEED_REQUESTS]
        replies.append(
            client.send_request(
                {
                    "request_id": "ins",
                    "input": {"Instruction": {"command": "add", "parameters": {"a": 2, "b": 40}}},
                }
            )
        )
    finally:
        client.close()
    assert [r["request_id"] for r in replies] == ["chat_001", "stream_001", "config_001", "ins"]
    assert replies[0]["response"]["Text"].startswith("echo:")
    chunks = replies[1]["response"]["Stream"]
    assert len(chunks) > 1 and "echo: 写一个简单的 Rust Hello World 程序" in "".join(chunks)
    assert replies[2]["response"]["Text"] == "echo: 分析这个项目的代码结构"
    assert replies[3]["response"] == {"ToolResult": {"name": "add", "result": 42}}
    assert replies[3]["token_usage"] is None


# ------------------------------------------------------------------------------ input types


def test_text_runs_the_agent_with_its_tools(srv):
    with srv.client() as c:
        r = c.request({"request_id": "t", "input": {"Text": "RUN: final_answer(str(add(2, 3)))"}})
    assert r["response"] == {"Text": "5"} and r["error"] is None
    assert ta.CALLS == ["add(2,3)"]


@pytest.mark.parametrize("use_tools", [True, False])
def test_image_reaches_the_model_as_an_image(serve_factory, use_tools):
    model = ta.RecordingModel(ta.respond if use_tools else ta.chat_respond)
    srv = serve_factory(ta.code_agent_factory(model))
    with srv.client() as c:
        r = c.request(
            {
                "request_id": "img",
                "use_tools": use_tools,
                "input": {
                    "Multi": [
                        {"Text": "IMAGE_SIZE"},
                        {"Image": {"data": png(7, 5), "mime_type": "image/png"}},
                    ]
                },
            }
        )
    assert r["error"] is None
    (content,) = r["response"]["Multi"]
    assert content["Text"] == ("7x5" if use_tools else "chat(You are a helpful as): IMAGE_SIZE [image 7x5]")
    # A lone image (here as a data URL) gets a default task.
    with srv.client() as c:
        r = c.request(
            {
                "request_id": "img2",
                "use_tools": use_tools,
                "input": {"Image": {"data": "data:image/png;base64," + png(3, 4)}},
            }
        )
    expected = (
        "echo: Describe the attached image(s)."
        if use_tools
        else "chat(You are a helpful as): Describe the attached image(s). [image 3x4]"
    )
    assert r["error"] is None and r["response"]["Text"] == expected


def test_unreadable_image_is_a_processing_error(srv):
    with srv.client() as c:
        r = c.request({"request_id": "bad", "input": {"Image": {"data": b64("not an image")}}})
    assert r["error"].startswith("processing_error: Image #1 is not a readable image")
    assert r["error_code"] == "processing_error" and r["response"] == {"Text": ""}


def test_file_is_saved_to_a_per_request_folder_named_in_the_task(serve_factory):
    request = {
        "request_id": "f",
        "input": {
            "Multi": [
                {
                    "File": {
                        "filename": "../../etc/notes.txt",
                        "content_type": "text/plain",
                        "data": b64("line one\nline two"),
                    }
                },
                {"Text": "Read the file."},
            ]
        },
    }
    seen: list[str] = []

    def respond(messages):
        text = ta.task_text(messages)
        seen.append(text)
        path = text.split("at path ", 1)[1].split()[0]
        return f"<code>\nfinal_answer({path!r} + '|' + read_text_file({path!r}))\n</code>"

    srv = serve_factory(ta.code_agent_factory(ta.ScriptedModel([respond], repeat_last=True)))
    with srv.client() as c:
        r = c.request(request)
    assert r["error"] is None, r
    path, content = r["response"]["Multi"][0]["Text"].split("|", 1)
    assert content == "line one\nline two"
    assert os.path.basename(path) == "notes.txt" and "async-agent-request-" in path
    assert "Content of notes.txt:\n```\nline one\nline two\n```" in seen[0]
    assert not os.path.exists(os.path.dirname(path)), "the request's folder is removed afterwards"


def test_instruction_runs_the_tool_without_the_model(serve_factory):
    model = ta.RecordingModel()
    srv = serve_factory(ta.async_agent_factory(model))
    with srv.client() as c:
        ok = c.request(
            {"request_id": "i1", "input": {"Instruction": {"command": "add", "parameters": {"a": 1, "b": 2}}}}
        )
        unknown = c.request({"request_id": "i2", "input": {"Instruction": {"command": "nope"}}})
        bad = c.request(
            {"request_id": "i3", "input": {"Instruction": {"command": "add", "parameters": {"a": 1, "c": 2}}}}
        )
        single = c.request(
            {"request_id": "i4", "input": {"Instruction": {"command": "block", "parameters": 0.01}}}
        )
    assert ok["response"] == {"ToolResult": {"name": "add", "result": 3}} and ok["error"] is None
    assert model.messages_seen == [], "an Instruction never calls the model"
    assert unknown["error"].startswith("processing_error: Unknown tool 'nope'")
    assert "add" in unknown["error"] and "submit_task" in unknown["error"]
    assert "unknown parameter(s) ['c']" in bad["error"] and "missing parameter(s) ['b']" in bad["error"]
    assert single["response"] == {"ToolResult": {"name": "block", "result": "waited"}}


def test_multi_runs_instructions_then_the_agent_with_their_results(serve_factory):
    seen = []

    def respond(messages):
        seen.append(ta.task_text(messages))
        return "<code>\nfinal_answer('combined')\n</code>"

    srv = serve_factory(ta.code_agent_factory(ta.ScriptedModel([respond], repeat_last=True)))
    with srv.client() as c:
        r = c.request(
            {
                "request_id": "m",
                "input": {
                    "Multi": [
                        {"Instruction": {"command": "add", "parameters": {"a": 20, "b": 22}}},
                        {"Text": "What did add return?"},
                    ]
                },
            }
        )
    assert r["response"] == {"Multi": [{"ToolResult": {"name": "add", "result": 42}}, {"Text": "combined"}]}
    assert 'add({"a": 20, "b": 22}) returned 42' in seen[0] and seen[0].endswith(
        "Request:\nWhat did add return?"
    )


# ----------------------------------------------------------------------------------- config


def test_use_tools_false_answers_with_the_model_alone_and_prompt_replaces_it(serve_factory):
    model = ta.RecordingModel(ta.chat_respond)
    srv = serve_factory(ta.async_agent_factory(model))
    with srv.client() as c:
        plain = c.request({"request_id": "a", "input": {"Text": "hello"}, "use_tools": False})
        custom = c.request(
            {
                "request_id": "b",
                "input": {"Text": "hi"},
                "use_tools": False,
                "config": {"prompt": "You are a pirate.", "max_context_num": 0},
            }
        )
    assert plain["response"] == {"Text": "chat(You are a helpful as): hello"}
    assert custom["response"] == {"Text": "chat(You are a pirate.): hi"}
    first, second = model.messages_seen
    assert len(first) == 2 and ta.message_text(first[0]) == DEFAULT_SYSTEM_PROMPT
    assert "submit_task" not in ta.message_text(first[0]), "no agent prompt, no tools"
    assert plain["token_usage"] == {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}


def test_prompt_overrides_the_agent_instructions(serve_factory):
    model = ta.RecordingModel()
    srv = serve_factory(ta.code_agent_factory(model))
    with srv.client() as c:
        c.request(
            {"request_id": "a", "input": {"Text": "x"}, "config": {"prompt": "ALWAYS ANSWER IN CAPITALS"}}
        )
        c.request({"request_id": "b", "input": {"Text": "y"}})
    with_prompt, without = (ta.message_text(m[0]) for m in model.messages_seen)
    assert "ALWAYS ANSWER IN CAPITALS" in with_prompt and "ALWAYS ANSWER IN CAPITALS" not in without


@pytest.mark.parametrize("use_tools", [True, False])
def test_max_tokens_reaches_every_model_call(serve_factory, use_tools):
    model = ta.RecordingModel(ta.respond if use_tools else ta.chat_respond)
    srv = serve_factory(ta.async_agent_factory(model))
    with srv.client() as c:
        r = c.request(
            {
                "request_id": "a",
                "input": {"Text": "STEPS: x = 1 ||| final_answer('two steps')"},
                "use_tools": use_tools,
                "config": {"max_tokens": 77},
            }
        )
        c.request({"request_id": "b", "input": {"Text": "no limit"}, "use_tools": use_tools})
    assert r["error"] is None
    limited = model.kwargs_seen[:-1]
    assert len(limited) == (2 if use_tools else 1)
    assert all(k.get("max_tokens") == 77 for k in limited)
    assert "max_tokens" not in model.kwargs_seen[-1]


def test_max_tool_try_bounds_the_agent_steps(serve_factory):
    models: list[ta.RecordingModel] = []

    def factory():
        models.append(ta.RecordingModel())
        return ta.CodeAgent(tools=ta.TOOLS, model=models[-1], verbosity_level=-1, max_steps=10)

    srv = serve_factory(factory)
    with srv.client() as c:
        r = c.request(
            {"request_id": "s", "input": {"Text": "STEPS: x = add(1, 1)"}, "config": {"max_tool_try": 2}}
        )
    assert r["error"] is None
    # Two steps, then smolagents' one "final answer after max steps" call.
    assert len(models[0].kwargs_seen) == 3
    assert ta.CALLS == ["add(1,1)", "add(1,1)"]


def test_max_context_num_shows_earlier_exchanges_of_this_connection_only(serve_factory):
    seen = []

    def respond(messages):
        seen.append(ta.task_text(messages))
        return "<code>\nfinal_answer('ok')\n</code>"

    srv = serve_factory(
        ta.code_agent_factory(ta.ScriptedModel([respond], repeat_last=True)), default_context_num=0
    )
    with srv.client() as c:
        for i in range(3):
            c.request({"request_id": f"r{i}", "input": {"Text": f"question {i}"}})
        c.request({"request_id": "r3", "input": {"Text": "q3"}, "config": {"max_context_num": 2}})
        c.request({"request_id": "r4", "input": {"Text": "q4"}, "config": {"max_context_num": 0}})
    with srv.client() as other:
        other.request({"request_id": "o", "input": {"Text": "fresh"}, "config": {"max_context_num": 5}})
    assert seen[:3] == ["question 0", "question 1", "question 2"]  # default 0: no context
    assert (
        "question 0" not in seen[3]
        and "[1] User: question 1" in seen[3]
        and "[2] User: question 2" in seen[3]
    )
    assert "[2] Assistant: ok" in seen[3] and seen[3].endswith("Request:\nq3")
    assert seen[4] == "q4"
    assert seen[5] == "fresh", "another connection has its own history"


# ------------------------------------------------------------------------------------ stream


def test_stream_ends_with_one_complete_stream_line_and_nothing_else(srv):
    with srv.client() as c:
        agent = c.request(
            {"request_id": "s1", "input": {"Text": "RUN: final_answer('one two three')"}, "stream": True}
        )
        model_only = c.request(
            {"request_id": "s2", "input": {"Text": "hi there"}, "stream": True, "use_tools": False}
        )
        after = c.request({"request_id": "s3", "input": {"Text": "next"}})
    assert agent["response"] == {"Stream": ["one", " two", " three"]}
    chunks = model_only["response"]["Stream"]
    assert len(chunks) > 1 and "echo: hi there" in "".join(chunks)  # the model's own deltas
    assert after["request_id"] == "s3", "no extra lines were sent for the streamed requests"


def test_incremental_stream_is_opt_in(srv):
    with srv.client() as c:
        c.send(
            {
                "request_id": "inc",
                "input": {"Text": "a b c"},
                "stream": True,
                "use_tools": False,
                "config": {"incremental_stream": True},
            }
        )
        lines = []
        while True:
            line = c.read()
            lines.append(line)
            if not line.get("partial"):
                break
    partial, final = lines[:-1], lines[-1]
    assert len(partial) > 1 and all(
        m["partial"] is True and len(m["response"]["Stream"]) == 1 for m in partial
    )
    assert [m["response"]["Stream"][0] for m in partial] == final["response"]["Stream"]
    assert "partial" not in final and final["token_usage"]["total_tokens"] > 0


def test_incremental_stream_of_an_agent_sends_its_steps(srv):
    with srv.client() as c:
        c.send(
            {
                "request_id": "inc",
                "input": {"Text": "STEPS: x = 1 ||| final_answer('done')"},
                "stream": True,
                "config": {"incremental_stream": True},
            }
        )
        lines = []
        while not lines or lines[-1].get("partial"):
            lines.append(c.read())
    assert [m["response"]["Stream"][0].split("]")[0] for m in lines[:-1]] == ["[step 1", "[step 2"]
    assert lines[-1]["response"] == {"Stream": ["done"]}


# ---------------------------------------------------------------------------- tool approval


def test_ask_before_tool_execution_approve_and_deny(srv):
    with srv.client() as c:
        c.send(
            {
                "request_id": "ap",
                "input": {"Text": "RUN: final_answer(str(add(2, 3)))"},
                "config": {"ask_before_tool_execution": True},
            }
        )
        question = c.read()
        assert question == {
            "request_id": "ap",
            "response": {"ToolCall": {"name": "add", "arguments": {"a": 2, "b": 3}}},
            "error": None,
            "token_usage": None,
        }
        assert ta.CALLS == [], "nothing runs before the client answers"
        final = c.request({"request_id": "ap", "input": {"Instruction": {"command": "approve"}}})
        assert final["response"] == {"Text": "5"} and ta.CALLS == ["add(2,3)"]

        code = (
            "try:\n    r = add(1, 1)\nexcept Exception as e:\n    r = 'refused: ' + str(e)\nfinal_answer(r)"
        )
        c.send(
            {
                "request_id": "dn",
                "input": {"Text": "RUN: " + code},
                "config": {"ask_before_tool_execution": True},
            }
        )
        assert c.read()["response"]["ToolCall"]["name"] == "add"
        final = c.request(
            {
                "request_id": "dn",
                "input": {"Instruction": {"command": "deny", "parameters": {"reason": "not now"}}},
            }
        )
        assert final["response"]["Text"].startswith("refused: ")
        assert "denied the call to tool 'add' (not now)" in final["response"]["Text"]
        assert ta.CALLS == ["add(2,3)"]

        # An Instruction asks too; denied, it is a processing_error.
        c.send(
            {
                "request_id": "in",
                "input": {"Instruction": {"command": "add", "parameters": {"a": 5, "b": 5}}},
                "config": {"ask_before_tool_execution": True},
            }
        )
        assert c.read()["response"] == {"ToolCall": {"name": "add", "arguments": {"a": 5, "b": 5}}}
        final = c.request({"request_id": "in", "input": {"Instruction": {"command": "deny"}}})
        assert final["error"] == "processing_error: The client denied running tool 'add'"


def test_seed_client_class_can_answer_approvals(srv):
    client = AgentCLIClient("127.0.0.1", srv.port)
    try:
        question = client.send_request(
            {
                "request_id": "q",
                "input": {"Text": "RUN: final_answer(add(1, add(2, 3)))"},
                "config": {"ask_before_tool_execution": True},
            }
        )
        assert question["response"]["ToolCall"] == {"name": "add", "arguments": {"a": 2, "b": 3}}
        second = client.send_request({"request_id": "q", "input": {"Instruction": {"command": "approve"}}})
        assert second["response"]["ToolCall"] == {"name": "add", "arguments": {"a": 1, "b": 5}}
        final = client.send_request({"request_id": "q", "input": {"Instruction": {"command": "approve"}}})
        assert final["response"] == {"Text": "6"}
    finally:
        client.close()


# ------------------------------------------------------------------------------ error codes


def test_parse_errors_keep_the_connection_usable(srv):
    with srv.client() as c:
        bad_json = c.request("{not json\n")
        no_input = c.request({"request_id": "n1"})
        bad_b64 = c.request({"request_id": "n2", "input": {"File": {"filename": "x", "data": "###"}}})
        good = c.request({"request_id": "ok", "input": {"Text": "still here"}})
    assert (
        bad_json["request_id"] == ""
        and bad_json["response"] == {"Text": ""}
        and bad_json["token_usage"] is None
    )
    assert bad_json["error"].startswith("parse_error: Failed to parse request: Expecting property name")
    assert no_input["request_id"] == "n1" and no_input["error"].startswith(
        "parse_error: Invalid request: input:"
    )
    assert "not valid base64" in bad_b64["error"] and bad_b64["error_code"] == "parse_error"
    assert good["response"] == {"Text": "echo: still here"}


def test_processing_errors(serve_factory):
    def broken():
        raise RuntimeError("no agent today")

    srv = serve_factory(broken)
    with srv.client() as c:
        r = c.request({"request_id": "x", "input": {"Text": "hi"}})
    assert r["error"] == "processing_error: The agent factory failed: RuntimeError: no agent today"

    srv2 = serve_factory(ta.code_agent_factory(ta.ScriptedModel(["no code block here"])))
    with srv2.client() as c:
        r = c.request({"request_id": "y", "input": {"Text": "hi"}})
    srv3 = serve_factory()
    with srv3.client() as c:
        dup_a = c.send({"request_id": "same", "input": {"Text": "STEPS: block(20)"}})
        ta.BLOCK_STARTED.wait(10)
        dup = c.request({"request_id": "same", "input": {"Text": "again"}})
        ta.RELEASE.set()
    assert r["error"].startswith("processing_error: The agent failed:") and "ScriptedModel" in r["error"]
    assert dup_a is None
    assert dup["error"].startswith("processing_error: request_id 'same' is already in flight")


def test_oversized_line_gets_connection_error_and_closes(serve_factory):
    srv = serve_factory(max_line_bytes=1024)
    with srv.client() as c:
        ok = c.request({"request_id": "small", "input": {"Text": "x"}})
        c.send({"request_id": "big", "input": {"Text": "x" * 5000}})
        err = c.read()
        assert c.read() is None, "the server closed the connection"
    assert ok["error"] is None
    assert err["error"].startswith("connection_error: Line longer than the limit of 1024 bytes")
    with srv.client() as c:  # the server itself is fine
        assert c.request({"request_id": "again", "input": {"Text": "x"}})["error"] is None


def test_timeout_error_cancels_the_work(serve_factory):
    srv = serve_factory(request_timeout=30)
    with srv.client() as c:
        t0 = time.monotonic()
        r = c.request(
            {
                "request_id": "slow",
                "input": {"Text": "STEPS: block(20) ||| final_answer(add(1, 1))"},
                "config": {"timeout": 0.5},
            }
        )
        elapsed = time.monotonic() - t0
        assert r["error"].startswith("timeout_error: The request ran longer than its time limit of 0.5 s")
        assert r["error_code"] == "timeout_error" and elapsed < 10
        assert srv.record("slow").status == "timeout"
        ta.RELEASE.set()
        # The connection still works, and the cancelled agent never took its second step.
        assert c.request({"request_id": "after", "input": {"Text": "x"}})["error"] is None
    assert ta.CALLS == []


def test_server_timeout_caps_the_request_timeout(serve_factory):
    srv = serve_factory(request_timeout=0.4)
    with srv.client() as c:
        r = c.request({"request_id": "s", "input": {"Text": "STEPS: block(20)"}, "config": {"timeout": 100}})
    assert "time limit of 0.4 s" in r["error"]


def test_client_vanishing_cancels_its_request(serve_factory):
    models: list[ta.RecordingModel] = []
    finished = threading.Event()

    def factory():
        models.append(ta.RecordingModel())
        agent = ta.NotifyingCodeAgent(tools=ta.TOOLS, model=models[-1], verbosity_level=-1, max_steps=6)
        agent.finished = finished
        return agent

    srv = serve_factory(factory)
    c = srv.client()
    # After block() returns, neither the add() in the same step nor a next model call may run.
    c.send(
        {
            "request_id": "gone",
            "input": {"Text": "STEPS: block(20)\nadd(1, 2) ||| add(3, 4) ||| final_answer('late')"},
        }
    )
    assert ta.BLOCK_STARTED.wait(10)
    c.sock.shutdown(socket.SHUT_RDWR)
    c.close()
    record = srv.record("gone")
    assert record.status == "cancelled" and record.error == "client disconnected"
    ta.RELEASE.set()  # the tool returns; the agent must stop before its next model call
    assert finished.wait(10)
    assert len(models[0].kwargs_seen) == 1 and ta.CALLS == []


def test_token_required(serve_factory):
    srv = serve_factory(token="s3cret")
    with srv.client() as c:
        r = c.request({"request_id": "a", "input": {"Text": "hi"}})
        assert r["error"].startswith("connection_error: This server requires a token")
        assert c.read() is None
    with srv.client() as c:
        r = c.request({"request_id": "a", "input": {"Text": "hi"}, "token": "wrong"})
        assert r["error"] == "connection_error: Invalid token; the connection is closed." and c.read() is None
    with srv.client() as c:
        assert c.request({"token": "s3cret"})["response"] == {"Text": "authenticated"}
        assert c.request({"request_id": "b", "input": {"Text": "hi"}})["response"] == {"Text": "echo: hi"}
    with srv.client() as c:
        assert c.request({"request_id": "c", "input": {"Text": "hi"}, "token": "s3cret"})["error"] is None
        assert c.request({"request_id": "d", "input": {"Text": "again"}})["error"] is None


def test_server_shutdown_answers_in_flight_requests(serve_factory):
    srv = serve_factory()
    c = srv.client()
    c.send({"request_id": "busy", "input": {"Text": "STEPS: block(20)"}})
    assert ta.BLOCK_STARTED.wait(10)
    srv.stop()
    r = c.read()
    assert r["error"] == "connection_error: The server is shutting down"
    assert c.read() is None
    c.close()


# ------------------------------------------------------------------------------ concurrency


def test_one_connection_many_requests_answered_out_of_order(serve_factory):
    instances = []

    def factory():
        agent = ta.async_agent_factory()()
        instances.append(id(agent))
        return agent

    srv = serve_factory(factory)
    ta.BARRIER["five"] = threading.Barrier(5)
    with srv.client() as c:
        # The slow one goes first; the five below meet at a barrier, so they must run at the same time.
        c.send({"request_id": "slow", "input": {"Text": "STEPS: block(20) ||| final_answer('slow done')"}})
        assert ta.BLOCK_STARTED.wait(10)
        for i in range(5):
            c.send({"request_id": f"m{i}", "input": {"Text": f"RUN: final_answer(meet('five') + ' {i}')"}})
        early = c.read_final(5)
        ta.RELEASE.set()
        late = c.read_final(1)
    assert {k: v["response"]["Text"] for k, v in early.items()} == {
        f"m{i}": f"met five {i}" for i in range(5)
    }
    assert late["slow"]["response"] == {"Text": "slow done"}
    assert len(set(instances)) == 6, "each request got its own agent instance"


def test_many_connections_at_once(serve_factory):
    # In-process code: 60 requests at once test the connections; 60 sandboxed kernels starting at
    # once (most of a CPU second each) would test this machine's CPUs against the clients' timeouts.
    srv = serve_factory(code_isolation=False)
    results: dict[str, dict] = {}
    errors: list[BaseException] = []

    def run(n: int) -> None:
        try:
            with srv.client() as c:
                for i in range(5):
                    c.send(
                        {
                            "request_id": f"c{n}-{i}",
                            "input": {"Text": f"RUN: final_answer(str(add({n}, {i})))"},
                        }
                    )
                results.update(c.read_final(5))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert len(results) == 60
    assert all(results[f"c{n}-{i}"]["response"] == {"Text": str(n + i)} for n in range(12) for i in range(5))


def test_stray_approval_is_ignored_and_not_taken_for_the_response(srv):
    with srv.client() as c:
        c.send({"request_id": "busy", "input": {"Text": "STEPS: block(20)\nfinal_answer('finished')"}})
        assert ta.BLOCK_STARTED.wait(10)
        c.send({"request_id": "busy", "input": {"Instruction": {"command": "approve"}}})
        probe = c.request({"request_id": "probe", "input": {"Text": "still answering"}})
        ta.RELEASE.set()
        final = c.read()
    assert probe["response"] == {"Text": "echo: still answering"}
    assert final == {
        "request_id": "busy",
        "response": {"Text": "finished"},
        "error": None,
        "token_usage": final["token_usage"],
    }


def test_unanswered_approval_times_out_and_the_tool_never_runs(serve_factory):
    # In-process code: the request's 0.5 s must go to the unanswered approval, not to starting a
    # sandboxed kernel (about 0.7 s of CPU on its own; tests/test_code_sandbox.py covers that path).
    srv = serve_factory(code_isolation=False)
    with srv.client() as c:
        c.send(
            {
                "request_id": "wait",
                "input": {"Text": "RUN: final_answer(str(add(1, 1)))"},
                "config": {"ask_before_tool_execution": True, "timeout": 0.5},
            }
        )
        assert "ToolCall" in c.read()["response"]
        r = c.read()
        assert r["error"].startswith("timeout_error:")
        # A late answer is not taken for anything: the request is gone.
        late = c.request({"request_id": "wait", "input": {"Instruction": {"command": "approve"}}})
    assert late["error"].startswith(
        "processing_error: No tool call of request 'wait' is waiting for approval"
    )
    assert srv.record("wait").status == "timeout"
    assert ta.CALLS == []


def test_a_tool_calling_agent_factory_works_too(serve_factory):
    from smolagents import ToolCallingAgent

    def respond(messages):
        if any(
            "Observation" in ta.message_text(m) or ta.message_text(m).strip() == "5" for m in messages[2:]
        ):
            return json.dumps({"name": "final_answer", "arguments": {"answer": "sum is 5"}})
        return json.dumps({"name": "add", "arguments": {"a": 2, "b": 3}})

    model = ta.ScriptedModel([respond], repeat_last=True)
    srv = serve_factory(
        lambda: ToolCallingAgent(tools=ta.TOOLS, model=model, verbosity_level=-1, max_steps=4)
    )
    with srv.client() as c:
        c.send(
            {
                "request_id": "tc",
                "input": {"Text": "add 2 and 3"},
                "config": {"ask_before_tool_execution": True},
            }
        )
        assert c.read()["response"] == {"ToolCall": {"name": "add", "arguments": {"a": 2, "b": 3}}}
        final = c.request({"request_id": "tc", "input": {"Instruction": {"command": "approve"}}})
    assert final["response"] == {"Text": "sum is 5"}, final
    assert ta.CALLS == ["add(2,3)"]


# ----------------------------------------------------------------- requests are manager tasks


@pytest.fixture
def manager():
    from async_task_system import TaskManager

    managers = []

    def make(max_workers: int = 2):
        managers.append(TaskManager(max_workers=max_workers))
        return managers[-1]

    yield make
    ta.RELEASE.set()
    for m in managers:
        m.shutdown(wait=False, cancel_pending=True)


def test_a_request_is_a_task_of_the_given_manager(serve_factory, manager):
    from async_task_system import TaskStatus

    tasks = manager()
    srv = serve_factory(ta.code_agent_factory(), task_manager=tasks)
    with srv.client() as c:
        assert c.request({"request_id": "r1", "input": {"Text": "hello"}})["response"] == {
            "Text": "echo: hello"
        }
    record = srv.record("r1")
    info = tasks.check(record.task_id)
    assert (info.kind.value, info.name, info.status) == ("request", "serve_request", TaskStatus.COMPLETED)
    assert info.arguments["request_id"] == "r1" and info.timeout == 300 and record.status == "completed"
    assert info.result.content.Text == "echo: hello"
    srv.stop()
    assert not tasks.closed, "a manager the server was given keeps running after close()"

    own = serve_factory(max_concurrent_requests=3)
    assert own.server.task_manager.max_workers == 3
    own.stop()
    assert own.server.task_manager.closed, "the manager the server created is shut down with it"


def test_timed_out_and_cancelled_requests_are_failed_and_cancelled_tasks(serve_factory, manager):
    from async_task_system import TaskStatus

    tasks = manager()
    srv = serve_factory(ta.code_agent_factory(), task_manager=tasks)
    slow = {"Text": "STEPS: block(20) ||| final_answer(add(1, 1))"}
    with srv.client() as c:
        r = c.request({"request_id": "slow", "input": slow, "config": {"timeout": 0.5}})
    assert r["error_code"] == "timeout_error"
    info = tasks.check(srv.record("slow").task_id)
    assert info.status is TaskStatus.FAILED and info.error.type == "timeout" and info.timeout == 0.5

    c = srv.client()
    c.send({"request_id": "gone", "input": slow})
    c.sock.shutdown(socket.SHUT_RDWR)
    c.close()
    record = srv.record("gone")
    assert record.status == "cancelled" and tasks.check(record.task_id).status is TaskStatus.CANCELLED


def test_the_concurrency_limit_is_max_workers_and_waiting_requests_are_pending(serve_factory, manager):
    from async_task_system import TaskStatus

    tasks = manager(max_workers=1)
    # In-process code: "second" has 0.3 s once it runs, less than a sandboxed kernel takes to start.
    srv = serve_factory(ta.code_agent_factory(), task_manager=tasks, code_isolation=False)
    assert srv.server.max_concurrent_requests == 1
    seen = {"pending": threading.Event(), "ended": threading.Event()}

    def watch(info) -> None:
        if info.arguments.get("request_id") == "second":
            seen["ended" if info.status.is_terminal else "pending"].set()

    tasks.add_listener(watch)
    with srv.client() as c:
        c.send({"request_id": "first", "input": {"Text": "STEPS: block(20) ||| final_answer('first done')"}})
        assert ta.BLOCK_STARTED.wait(10)
        c.send({"request_id": "second", "input": {"Text": "queued"}, "config": {"timeout": 0.3}})
        assert seen["pending"].wait(10)
        # Its time limit counts from the start of its task, not while it waits for the slot.
        assert not seen["ended"].wait(0.6)
        statuses = {t.arguments["request_id"]: t.status for t in tasks.list()}
        assert statuses == {"first": TaskStatus.RUNNING, "second": TaskStatus.PENDING}
        ta.RELEASE.set()
        answers = c.read_final(2)
    assert answers["first"]["response"] == {"Text": "first done"}
    assert answers["second"]["response"] == {"Text": "echo: queued"}


# ------------------------------------------------------------------------------ hostile input (issue 9)


def test_deep_nesting_is_a_parse_error_and_the_connection_stays_usable(srv):
    with srv.client() as c:
        deep = c.request("[" * 100_000 + "]" * 100_000 + "\n")
        deep_in_request = c.request(
            '{"request_id": "d", "input": {"Text": "x"}, "meta": ' + "[" * 100_000 + "]" * 100_000 + "}\n"
        )
        good = c.request({"request_id": "ok", "input": {"Text": "still here"}})
    assert deep["error"] == "parse_error: Failed to parse request: JSON nested too deeply"
    assert deep_in_request["error_code"] == "parse_error"
    assert good["response"] == {"Text": "echo: still here"}


@pytest.mark.parametrize(
    "first_line",
    [
        b"POST / HTTP/1.1\r\n",
        b"GET / HTTP/1.1\r\n",
        b"get /index.html HTTP/1.0\r\n",
        b"OPTIONS * HTTP/1.1\r\n",
        b"PUT http://127.0.0.1:8080/ HTTP/1.1\r\n",
    ],
)
def test_an_http_request_closes_the_connection_and_runs_nothing(srv, first_line):
    # What a web page's fetch("http://127.0.0.1:PORT", {method: "POST", body: ...}) sends.
    body = json.dumps(
        {"request_id": "web", "input": {"Instruction": {"command": "add", "parameters": {"a": 1, "b": 2}}}}
    )
    headers = b"Host: 127.0.0.1\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % len(body)
    with srv.client() as c:
        c.send(first_line + headers + body.encode() + b"\n")
        assert c.read() is None, "closed with no answer at all"
    assert ta.CALLS == [] and srv.records.empty()
    with srv.client() as c:  # JSON clients are unaffected
        assert c.request({"request_id": "ok", "input": {"Text": "x"}})["error"] is None


@pytest.mark.parametrize(
    "field",
    [
        {"stream": "yes"},
        {"use_tools": "false"},
        {"stream": 1},
        {"config": {"ask_before_tool_execution": "no"}},
        {"config": {"incremental_stream": 0}},
        {"config": {"max_tool_try": "5"}},
        {"config": {"max_context_num": True}},
        {"config": {"timeout": "5"}},
    ],
)
def test_no_string_or_number_passes_for_a_boolean_or_a_number(field):
    with pytest.raises(p.RequestError) as info:
        p.parse_request({"request_id": "s", "input": {"Text": "x"}, **field})
    assert info.value.code is p.ErrorCode.PARSE_ERROR
    # JSON numbers still work where numbers are expected (an int is a valid float).
    assert (
        p.parse_request({"request_id": "s", "input": {"Text": "x"}, "config": {"timeout": 5}}).config.timeout
        == 5
    )


def test_long_file_names_are_shortened_and_errors_never_show_server_paths(serve_factory, tmp_path):
    srv = serve_factory(temp_dir=str(tmp_path))
    with srv.client() as c:
        long_name = c.request(
            {"request_id": "long", "input": {"File": {"filename": "a" * 300 + ".txt", "data": b64("hello")}}}
        )
    assert long_name["error"] is None, long_name["error"]
    # Every error text a client can provoke about files stays free of the server's folders.
    srv2 = serve_factory(temp_dir=str(tmp_path / "missing"))
    with srv2.client() as c:
        failed = c.request({"request_id": "f", "input": {"File": {"filename": "x.txt", "data": b64("x")}}})
    assert failed["error"] is not None and str(tmp_path) not in failed["error"]


def bomb_png(width: int, height: int) -> str:
    """A valid grayscale PNG of width x height black pixels, built row by row (never in memory)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer, row, parts = zlib.compressobj(9), b"\0" * (width + 1), []
    for _ in range(height):
        parts.append(packer.compress(row))
    parts.append(packer.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    png_bytes = (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")
    )
    return base64.b64encode(png_bytes).decode()


def test_image_bombs_are_refused_from_their_header(serve_factory):
    bomb = bomb_png(10_000, 10_000)  # 100 megapixels in ~100 KB: 100 MB once decoded
    assert len(bomb) < 400_000
    srv = serve_factory(max_image_pixels=25_000_000, max_request_pixels=30_000_000)
    with srv.client() as c:
        started = time.monotonic()
        one = c.request({"request_id": "bomb", "input": {"Image": {"data": bomb}}})
        elapsed = time.monotonic() - started
        many = c.request(
            {"request_id": "many", "input": {"Multi": [{"Image": {"data": bomb_png(4000, 4000)}}] * 3}}
        )
        fine = c.request({"request_id": "fine", "input": {"Multi": [{"Image": {"data": png(8, 8)}}] * 3}})
    assert one["error"].startswith("processing_error: Image #1 is 10000x10000 (100000000 pixels")
    assert elapsed < 2, "decoding was attempted"
    assert many["error"].startswith("processing_error: The images of this request have more than 30000000")
    assert fine["error"] is None


def test_one_client_cannot_take_every_slot(serve_factory):
    srv = serve_factory(max_concurrent_requests=4, max_running_per_connection=2)
    greedy = srv.client()
    for i in range(10):  # each blocks until released
        greedy.send({"request_id": f"g{i}", "input": {"Text": "STEPS: block(20)"}})
    assert ta.BLOCK_STARTED.wait(10)
    with srv.client() as honest:
        started = time.monotonic()
        answer = honest.request({"request_id": "h", "input": {"Text": "quick"}})
        assert answer["error"] is None and time.monotonic() - started < 5
    ta.RELEASE.set()
    answers = greedy.read_final(10)
    assert sorted(answers) == [f"g{i}" for i in range(10)] and all(
        a["error"] is None for a in answers.values()
    )
    greedy.close()


def test_one_address_cannot_take_every_slot_with_many_connections(serve_factory):
    srv = serve_factory(max_concurrent_requests=8, max_running_per_connection=4, max_running_per_client=4)
    greedy = []
    for n in range(4):  # 4 connections x 4 running would be 16 slots; the address gets 4
        sock = socket.create_connection(("127.0.0.1", srv.port), timeout=30, source_address=("127.0.0.2", 0))
        greedy.append(sock)
        for i in range(5):
            request = {"request_id": f"g{n}-{i}", "input": {"Text": "STEPS: block(20)"}}
            sock.sendall((json.dumps(request) + "\n").encode())
    assert ta.BLOCK_STARTED.wait(10)
    time.sleep(0.3)
    stats = srv.server.task_manager.get_statistics()
    assert stats["running"] + stats["pending"] == 4, stats
    with srv.client() as honest:
        started = time.monotonic()
        answer = honest.request({"request_id": "h", "input": {"Text": "quick"}})
        assert answer["error"] is None and time.monotonic() - started < 5
    ta.RELEASE.set()
    for sock in greedy:  # every greedy request is answered in the end
        with sock.makefile("rb") as lines:
            answers = [json.loads(lines.readline()) for _ in range(5)]
        assert all(a["error"] is None for a in answers), answers
        sock.close()


def test_connection_limits_and_the_authentication_timeout(serve_factory):
    srv = serve_factory(max_connections_per_client=3, token="s3cret", auth_timeout=0.5)
    clients = [srv.client() for _ in range(3)]
    with srv.client() as extra:
        refused = extra.read()
        assert (
            refused["error"] == "connection_error: Too many connections from your address; try again later."
        )
        assert extra.read() is None
    started = time.monotonic()
    for c in clients:  # silent: closed after the authentication timeout, with the reason
        assert c.read()["error"].startswith("connection_error: No token within 0.5 s")
        assert c.read() is None
        c.close()
    assert time.monotonic() - started < 5
    with srv.client() as c:  # the slots are free again
        assert c.request({"token": "s3cret"})["response"] == {"Text": "authenticated"}


def test_before_the_token_nothing_large_is_buffered(serve_factory):
    srv = serve_factory(token="s3cret", max_auth_line_bytes=4096)
    with srv.client() as c:
        with contextlib.suppress(OSError):  # the server may close while we still send
            c.send(b"x" * 200_000)  # unterminated, and far over the limit before the token
        refused = c.read()
        assert refused["error"].startswith("connection_error: Line longer than the limit of 4096 bytes")
    with srv.client() as c:  # a large request works once the token came on its own line
        assert c.request({"token": "s3cret"})["error"] is None
        r = c.request({"request_id": "big", "input": {"Text": "x" * 100_000}})
        assert r["error"] is None


def test_idle_connections_are_closed_but_not_while_answers_are_due(serve_factory):
    srv = serve_factory(idle_timeout=0.5)
    with srv.client() as c:
        r = c.request({"request_id": "slow", "input": {"Text": "STEPS: block(1.5) ||| final_answer('late')"}})
        ta.RELEASE.set()
    with srv.client() as c:
        assert c.read() is None  # nothing sent for 0.5 s: closed
    assert r["error"] is None, r  # the answer, 1.5 s in, came on a connection idle-limited to 0.5 s


def test_history_honours_max_context_num_zero_and_is_cut(serve_factory):
    srv = serve_factory(max_history_chars=100)
    with srv.client() as c:
        c.request({"request_id": "a", "input": {"Text": "x" * 10_000}, "config": {"max_context_num": 0}})
        c.request({"request_id": "b", "input": {"Text": "y" * 10_000}})
        histories = srv.thread.call(lambda: [list(conn.history) for conn in srv.server.connections])
    (history,) = histories
    assert len(history) == 1 and history[0].user == "y" * 100 + " [...]"


LONG_JOBS = {"running": 0, "started": 0}
LONG_JOBS_LOCK = threading.Lock()


@tool
def long_job(seconds: float) -> str:
    """Work for a long time, stopping early once the task is cancelled.

    Args:
        seconds: how long to work
    """
    from async_task_system import cancellation_requested

    with LONG_JOBS_LOCK:
        LONG_JOBS["running"] += 1
        LONG_JOBS["started"] += 1
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not cancellation_requested():
            time.sleep(0.02)
        return "cancelled" if cancellation_requested() else "done"
    finally:
        with LONG_JOBS_LOCK:
            LONG_JOBS["running"] -= 1


@pytest.mark.parametrize("shared", [False, True], ids=["own-manager", "shared-manager"])
def test_clients_leaving_cancel_the_background_tasks_their_requests_started(serve_factory, shared):
    from async_task_system import TaskManager, create_async_agent

    shared_manager = TaskManager(max_workers=40) if shared else None
    agents = []
    agents_lock = threading.Lock()

    def factory():
        agent = create_async_agent(
            tools=[long_job],
            model=ta.scripted_model(),
            verbosity_level=-1,
            max_steps=4,
            task_manager=shared_manager,
        )
        with agents_lock:
            agents.append(agent)
        return agent

    srv = serve_factory(factory, max_running_per_client=20)  # 20 clients on one address
    with LONG_JOBS_LOCK:
        LONG_JOBS.update(running=0, started=0)
    time.sleep(0.2)
    baseline = threading.active_count()
    n = 20
    clients = [srv.client() for _ in range(n)]
    code = "RUN: t = submit_task('tool', 'long_job', {'seconds': 60})\nwait_for_tasks([t], max_wait_time=120)"
    for i, c in enumerate(clients):
        c.send({"request_id": f"r{i}", "input": {"Text": code}})
    deadline = time.monotonic() + 20
    while LONG_JOBS["started"] < n and time.monotonic() < deadline:
        time.sleep(0.02)
    assert LONG_JOBS["started"] == n
    busy = threading.active_count()
    left = time.monotonic()
    for c in clients:
        c.sock.shutdown(socket.SHUT_RDWR)
        c.close()
    for i in range(n):
        assert srv.record(f"r{i}").status == "cancelled"
    managers = [shared_manager] if shared else [a.task_manager for a in agents]
    tasks = [info for m in managers for info in m.list() if info.name == "long_job"]
    assert len(tasks) == n
    # A shared manager keeps its (idle) pool threads; an agent's own manager goes with its request.
    allowed = baseline + 2 + (shared_manager.max_workers if shared_manager else 0)
    deadline = time.monotonic() + 10
    while (LONG_JOBS["running"] or threading.active_count() > allowed) and time.monotonic() < deadline:
        time.sleep(0.05)
    ended = time.monotonic() - left
    tasks = [info for m in managers for info in m.list() if info.name == "long_job"]
    assert {info.status.value for info in tasks} == {"cancelled"}
    assert LONG_JOBS["running"] == 0 and threading.active_count() <= allowed, threading.enumerate()
    assert ended < 5, (
        f"threads: baseline {baseline}, busy {busy}, after {threading.active_count()} ({ended:.2f} s)"
    )
    if shared_manager is not None:
        shared_manager.shutdown(wait=True, timeout=5)


def test_background_tasks_of_answered_requests_end_with_the_agent_or_the_connection(serve_factory):
    from async_task_system import TaskManager, create_async_agent

    shared = TaskManager(max_workers=4)
    own: list = []

    def factory(manager=None):
        agent = create_async_agent(
            tools=[long_job], model=ta.scripted_model(), verbosity_level=-1, max_steps=4, task_manager=manager
        )
        own.append(agent)
        return agent

    code = "RUN: final_answer(submit_task('tool', 'long_job', {'seconds': 60}))"
    private = serve_factory(factory)
    with private.client() as c:  # an agent's own manager: nobody could read the task afterwards
        task_id = c.request({"request_id": "a", "input": {"Text": code}})["response"]["Text"]
        assert own[0].task_manager.wait([task_id], timeout=5)
        assert own[0].task_manager.check(task_id).status.value == "cancelled"
    served = serve_factory(lambda: factory(shared))
    with served.client() as c:  # a shared one: later requests may still read it, until the client leaves
        task_id = c.request({"request_id": "b", "input": {"Text": code}})["response"]["Text"]
        later = c.request(
            {
                "request_id": "c",
                "input": {"Instruction": {"command": "check_task", "parameters": {"task_id": task_id}}},
            }
        )
        assert later["response"]["ToolResult"]["result"]["status"] == "running"
    assert shared.wait([task_id], timeout=5)
    assert shared.check(task_id).status.value == "cancelled"
    shared.shutdown(wait=True, timeout=5)


def test_an_agent_behind_the_server_can_start_a_conversation_task():
    from async_task_system import ScriptedModel, create_async_agent

    def factory():
        # The coordinator's one step starts a conversation (seed 000's create_task, from the LLM) and
        # answers with its result; the conversation runs on the same model (the AsyncAgent's).
        model = ScriptedModel(
            [
                "<code>\n"
                "t = submit_task('conversation', 'chat', {'prompt': 'say hi', 'tools': []})\n"
                "wait_for_tasks([t], max_wait_time=30)\n"
                "final_answer(get_task_results([t])[t])\n"
                "</code>",
                "<code>\nfinal_answer('hi from a conversation')\n</code>",
            ]
        )
        return create_async_agent(tools=[], model=model, verbosity_level=-1, max_steps=3)

    running = Running(factory)
    try:
        with running.client() as c:
            r = c.request({"request_id": "conv", "input": {"Text": "start a conversation"}})
        assert r["error"] is None and r["response"] == {"Text": "hi from a conversation"}
    finally:
        running.stop()
