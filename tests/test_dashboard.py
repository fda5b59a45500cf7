"""The platform's web dashboard in a real browser: Debian's chromium, headless, driven by Playwright.

The platform runs for real (SQLite store, REST API on uvicorn, a WebSocket worker subprocess); the
page is loaded from the platform itself and must show the agents, the tasks with their filters, a
task's live log as it is written (SSE), and the timeline, without a request to anywhere else.
No browser is downloaded: without /usr/bin/chromium (``apt-get install chromium``) the tests skip
with that reason, and fail under CI=true. ``DASHBOARD_SCREENSHOT=path.png`` saves a screenshot.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
sync_api = pytest.importorskip("playwright.sync_api")

from _platform import TOKEN, Workers, running_platform  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.slow


def _browser_or_skip():
    if not os.path.exists(CHROMIUM):
        reason = "Debian's chromium is not installed (apt-get install -y chromium)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"the dashboard test needs a browser under CI: {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    _browser_or_skip()
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def fleet(tmp_path):
    workers = Workers()
    try:
        with running_platform(f"sqlite:///{tmp_path / 'dashboard.db'}") as platform:
            workers.start(platform.ws_url, "dash-1", "--label", "region=test")
            assert platform.ws_hub.wait_for_workers(1, timeout=30), "the worker did not connect"
            yield platform
    finally:
        workers.stop_all()


def open_page(browser, platform, token: str = TOKEN):
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    requests: list[str] = []
    errors: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: message.type == "error" and errors.append(message.text))
    page.goto(f"{platform.http_url}/dashboard/#token={token}")
    return page, requests, errors


def test_the_dashboard_shows_agents_tasks_a_live_log_and_the_timeline(browser, fleet):
    done = fleet.submit_script("shell", "echo hello", agent_id="dash-1", timeout=30)
    slow_script = (
        "import sys, time\n"
        "for i in range(3):\n"
        "    print(f'line {i} <b>not html</b>', flush=True)\n"
        "    time.sleep(0.5)\n"
        "print('oops', file=sys.stderr, flush=True)\n"
    )
    fleet.manager.wait(done["task_id"], timeout=30)
    slow = fleet.submit_script("python", slow_script, agent_id="dash-1", timeout=30)

    page, requests, errors = open_page(browser, fleet)
    agents = page.locator("#agents tbody tr[data-agent='dash-1']")
    sync_api.expect(agents).to_contain_text("online", timeout=15_000)
    sync_api.expect(agents).to_contain_text("region=test")
    sync_api.expect(page.locator(f"#tasks tbody tr[data-task='{done['task_id']}']")).to_contain_text(
        "completed"
    )
    sync_api.expect(page.locator(f"#tasks tbody tr[data-task='{slow['task_id']}']")).to_be_visible()

    # the live log of the slow task: lines arrive while it runs, as text (never as HTML)
    page.locator(f"#tasks tbody tr[data-task='{slow['task_id']}']").click()
    log = page.locator("#log")
    sync_api.expect(log).to_contain_text("line 0 <b>not html</b>", timeout=15_000)
    sync_api.expect(log).to_contain_text("line 2", timeout=15_000)
    sync_api.expect(log.locator(".stderr")).to_contain_text("oops", timeout=15_000)
    sync_api.expect(page.locator("#log-state")).to_have_text("(ended)", timeout=15_000)
    assert log.locator("b").count() == 0, "a script's output was inserted as HTML"
    sync_api.expect(page.locator("#detail-status")).to_have_text("completed", timeout=15_000)

    # filters: only the python task is listed
    page.select_option("#filter-type", "python")
    sync_api.expect(page.locator("#tasks tbody tr")).to_have_count(1, timeout=10_000)
    sync_api.expect(page.locator("#tasks tbody tr")).to_contain_text(slow["task_id"])

    # the timeline is an image the page got from the platform
    image = page.locator("#timeline img")
    sync_api.expect(image).to_be_visible(timeout=10_000)
    page.wait_for_function("() => document.querySelector('#timeline img').naturalWidth > 0", timeout=10_000)

    screenshot = os.environ.get("DASHBOARD_SCREENSHOT")
    if screenshot:
        page.select_option("#filter-type", "")
        page.wait_for_timeout(500)
        page.screenshot(path=screenshot, full_page=True)
    page.close()

    assert not errors, f"the page reported errors: {errors}"
    own = (fleet.http_url, f"blob:{fleet.http_url}")  # blob: the timeline image the page itself made
    foreign = [url for url in requests if not url.startswith(own)]
    assert not foreign, f"the page loaded something from elsewhere: {foreign}"


def test_a_wrong_token_is_refused_and_the_page_asks_again(browser, fleet):
    page, _, _ = open_page(browser, fleet, token="not-the-token")
    sync_api.expect(page.locator("#error")).to_contain_text("token was refused", timeout=15_000)
    sync_api.expect(page.locator("#login")).to_be_visible()
    sync_api.expect(page.locator("#main")).to_be_hidden()
    # the right token then works
    page.fill("#token", TOKEN)
    page.click("#login button")
    sync_api.expect(page.locator("#agents tbody tr[data-agent='dash-1']")).to_be_visible(timeout=15_000)
    page.close()


def test_cancel_from_the_dashboard_stops_a_running_script(browser, fleet):
    task = fleet.submit_script("shell", "echo started; sleep 60", agent_id="dash-1", timeout=120)
    page, _, errors = open_page(browser, fleet)
    row = page.locator(f"#tasks tbody tr[data-task='{task['task_id']}']")
    sync_api.expect(row).to_be_visible(timeout=15_000)
    row.click()
    sync_api.expect(page.locator("#log")).to_contain_text("started", timeout=15_000)
    page.click("#cancel")
    sync_api.expect(page.locator("#detail-status")).to_have_text("cancelled", timeout=15_000)
    page.close()
    assert not errors, errors


def test_a_silent_script_shows_running_in_the_table_the_filter_and_the_detail(browser, fleet):
    task = fleet.submit_script("shell", "sleep 8", agent_id="dash-1", timeout=60)
    page, _, errors = open_page(browser, fleet)
    row = page.locator(f"#tasks tbody tr[data-task='{task['task_id']}']")
    sync_api.expect(row).to_contain_text("running", timeout=15_000)  # no output yet: started is enough
    page.select_option("#filter-status", "running")
    sync_api.expect(page.locator("#tasks tbody tr")).to_have_count(1, timeout=10_000)
    sync_api.expect(page.locator("#tasks tbody tr")).to_contain_text(task["task_id"])
    sync_api.expect(page.locator("#agents tbody tr[data-agent='dash-1']")).to_contain_text("1 / ")
    row.click()
    sync_api.expect(page.locator("#detail-status")).to_have_text("running", timeout=15_000)
    page.close()
    fleet.cancel(task["task_id"])
    assert not errors, errors


if __name__ == "__main__":  # pragma: no cover - `python tests/test_dashboard.py` takes the docs' screenshot
    target = Path(__file__).resolve().parent.parent / "docs" / "images" / "dashboard.png"
    os.environ["DASHBOARD_SCREENSHOT"] = str(target)
    sys.exit(pytest.main([__file__, "-q", "-k", "live_log"]))
