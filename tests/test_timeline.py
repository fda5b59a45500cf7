"""The timeline picture: SVG (one row per task, colors by status, dependencies, retries), HTML and text."""

from __future__ import annotations

import re
import threading
import time
import xml.etree.ElementTree as ET

import pytest

from async_task_system import TaskManager, TaskStatus
from async_task_system.observe.timeline import STATUS_COLORS, Timeline

SVG = "{http://www.w3.org/2000/svg}"


def work(seconds: float, name: str = "") -> str:
    time.sleep(seconds)
    return name


@pytest.fixture(scope="module")
def run():
    """A small pipeline: two cleans, an analysis after both, a flaky task retried twice, a timeout
    whose dependent never runs, a cancelled task and one still running."""
    attempts = {"n": 0}
    release = threading.Event()

    def flaky(seconds: float) -> int:
        attempts["n"] += 1
        time.sleep(seconds)
        if attempts["n"] < 3:
            raise RuntimeError("flaky")
        return attempts["n"]

    def blocked(name: str) -> str:
        release.wait(10)
        return name

    manager = TaskManager(max_workers=4, functions=[work, flaky, blocked], retry_backoff=0.02)
    ids = {
        "a": manager.submit("function", "work", {"seconds": 0.1, "name": "clean_a"}),
        "b": manager.submit("function", "work", {"seconds": 0.15, "name": "clean_b"}),
    }
    ids["c"] = manager.submit(
        "function", "work", {"seconds": 0.05, "name": "analyze"}, after=[ids["a"], ids["b"]]
    )
    ids["flaky"] = manager.submit("function", "flaky", {"seconds": 0.02}, retries=3)
    ids["slow"] = manager.submit("function", "work", {"seconds": 1.0, "name": "slow"}, timeout=0.1)
    ids["never"] = manager.submit("function", "work", {"seconds": 0.1, "name": "never"}, after=[ids["slow"]])
    manager.wait(list(ids.values()), timeout=10)
    ids["running"] = manager.submit("function", "blocked", {"name": "still running"})
    ids["cancelled"] = manager.submit("function", "work", {"seconds": 5, "name": "cancelled"})
    time.sleep(0.05)
    manager.cancel(ids["cancelled"])
    timeline = manager.timeline(title="test run")
    release.set()
    manager.shutdown()
    return ids, timeline


def rows(svg: str) -> dict[str, ET.Element]:
    root = ET.fromstring(svg)  # well-formed XML
    assert root.tag == f"{SVG}svg"
    return {g.get("data-task-id"): g for g in root.iter(f"{SVG}g") if g.get("class") == "task"}


def test_the_svg_has_one_row_per_task_colored_by_status(run):
    ids, timeline = run
    by_id = rows(timeline.to_svg())
    assert set(by_id) == set(ids.values())
    expected = {
        "a": TaskStatus.COMPLETED, "c": TaskStatus.COMPLETED, "flaky": TaskStatus.COMPLETED,
        "slow": TaskStatus.FAILED, "never": TaskStatus.FAILED, "running": TaskStatus.RUNNING,
        "cancelled": TaskStatus.CANCELLED,
    }  # fmt: skip
    for key, status in expected.items():
        row = by_id[ids[key]]
        assert row.get("data-status") == status.value
        shapes = [e for e in row if e.get("class") in ("bar", "not-started")]
        assert len(shapes) == 1
        assert STATUS_COLORS[status.value] in (shapes[0].get("fill"), shapes[0].get("stroke")), key
    assert by_id[ids["never"]].find(f"{SVG}rect[@class='not-started']") is not None, "it never ran"
    assert "timeout" in "".join(by_id[ids["slow"]].itertext())


def test_rows_are_in_order_of_creation_and_bars_in_time(run):
    ids, timeline = run
    root = ET.fromstring(timeline.to_svg())
    order = [g.get("data-task-id") for g in root.iter(f"{SVG}g") if g.get("class") == "task"]
    assert order == list(ids.values())
    bars = {g.get("data-task-id"): g.find(f"{SVG}rect[@class='bar']") for g in root.iter(f"{SVG}g")}
    analyze, clean_b = bars[ids["c"]], bars[ids["b"]]
    end_b = float(clean_b.get("x")) + float(clean_b.get("width"))
    assert float(analyze.get("x")) >= end_b - 1, "the analysis starts after the clean it waited for"


def test_dependencies_are_drawn_as_arrows(run):
    ids, timeline = run
    root = ET.fromstring(timeline.to_svg())
    arrows = {
        (p.get("data-from"), p.get("data-to"))
        for p in root.iter(f"{SVG}path")
        if p.get("class") == "dependency"
    }
    assert arrows == {(ids["a"], ids["c"]), (ids["b"], ids["c"]), (ids["slow"], ids["never"])}
    tooltip = rows(timeline.to_svg())[ids["c"]].find(f"{SVG}title").text
    assert f"waited for {ids['a']}, {ids['b']}" in tooltip


def test_retries_are_visible(run):
    ids, timeline = run
    row = rows(timeline.to_svg())[ids["flaky"]]
    assert row.get("data-attempts") == "3"
    assert "↻3 attempts" in "".join(row.itertext())
    assert row.find(f"{SVG}line[@class='retried']") is not None, "earlier attempts and back-offs, dashed"
    assert rows(timeline.to_svg())[ids["a"]].get("data-attempts") == "1"


@pytest.mark.parametrize("width", [30, 40, 60, 80, 120])
def test_the_text_chart_fits_the_width(run, width):
    ids, timeline = run
    text = timeline.to_text(width=width)
    lines = text.splitlines()
    assert len(lines) == 1 + len(ids), "an axis, then one line per task"
    assert all(len(line) <= width for line in lines), text
    colored = timeline.to_text(width=width, color=True)
    assert [len(re.sub(r"\x1b\[[0-9;]*m", "", line)) for line in colored.splitlines()] == [
        len(x) for x in lines
    ]


def test_the_text_chart_shows_status_dependencies_and_retries(run):
    ids, timeline = run
    lines = timeline.to_text(width=100).splitlines()[1:]
    number = {task_id: n for n, task_id in enumerate(ids.values(), start=1)}
    by_key = {key: lines[number[task_id] - 1] for key, task_id in ids.items()}
    assert "after #1,#2" in by_key["c"] and "completed" in by_key["c"]
    assert "↻3" in by_key["flaky"] and "░" in by_key["flaky"]
    assert "failed timeout" in by_key["slow"]
    assert "×" in by_key["never"] and "█" not in by_key["never"].split("│")[1]
    assert "running" in by_key["running"] and "cancelled" in by_key["cancelled"]


def test_html_in_jupyter_and_saved_files(run, tmp_path):
    _, timeline = run
    html = timeline._repr_html_()
    assert html.startswith("<div") and "<svg" in html
    ET.fromstring(html)  # inline SVG inside a div: still well-formed
    svg_path = timeline.save(tmp_path / "run.svg")
    assert ET.parse(svg_path).getroot().tag == f"{SVG}svg"
    page = timeline.save(tmp_path / "run.html").read_text()
    assert (
        page.startswith("<!DOCTYPE html>")
        and "<svg" in page
        and "http" not in page.replace("http://www.w3.org/2000/svg", "")
    ), "no external resource"
    with pytest.raises(ValueError, match=r"\.svg or \.html"):
        timeline.save(tmp_path / "run.png")


def test_an_empty_manager_draws_an_empty_timeline():
    with TaskManager() as manager:
        timeline = manager.timeline()
    assert rows(timeline.to_svg()) == {}
    assert len(timeline.to_text(width=50).splitlines()) == 1
    assert repr(timeline) == "<Timeline 0 tasks over 0.00 s>"


def test_a_timeline_of_plain_snapshots_needs_no_manager(run):
    ids, timeline = run
    again = Timeline(timeline.tasks, now=timeline.now)
    assert again.to_svg() == Timeline(timeline.tasks, now=timeline.now).to_svg()
    assert len(again.tasks) == len(ids)
