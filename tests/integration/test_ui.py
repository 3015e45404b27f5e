"""`kwheel ui` in a real headless browser: the graph, and numbers that follow the pipeline."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from kwheel.testing.processes import wait_until
from tests.conftest import ROOT
from tests.helpers import setup_topics
from tests.pipelines.tutorial_named import tutorial

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
REF = "tests.pipelines.tutorial_named:tutorial"

pytestmark = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="needs Debian's chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver); "
    "scripts/setup installs them where apt-get works",
)


@pytest.fixture
def ui_server(kafka, tmp_path):
    """Start `kwheel ui` for a pipeline name on a free port; yield its URL."""
    procs = []

    def start(pipeline_name: str) -> str:
        out = tmp_path / f"ui-{len(procs)}.log"
        env = {
            **os.environ,
            "KWHEEL_TEST_PIPELINE": pipeline_name,
            "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        }
        with open(out, "wb") as f:
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "kwheel",
                        "ui",
                        REF,
                        "-b",
                        kafka.bootstrap,
                        "--port",
                        "0",
                    ],
                    stdout=f,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                    cwd=ROOT,
                )
            )
        m = wait_until(
            lambda: re.search(r"on (http://127\.0\.0\.1:\d+/)", out.read_text()),
            30,
            "kwheel ui to listen",
        )
        return m.group(1)

    yield start
    for p in procs:
        p.terminate()
        p.wait(10)


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1440,1000",
        f"--user-data-dir={tmp_path / 'chromium'}",
    ):
        opts.add_argument(arg)
    driver = webdriver.Chrome(
        options=opts, service=Service(str(CHROMEDRIVER), log_output=str(tmp_path / "driver.log"))
    )
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def cell(driver, computation: str, field: str) -> str:
    from selenium.webdriver.common.by import By

    for row in driver.find_elements(By.CSS_SELECTOR, "tr[data-computation]"):
        if row.get_attribute("data-computation") == computation:
            return row.find_element(By.CSS_SELECTOR, f'td[data-field="{field}"]').text
    raise AssertionError(f"no row for computation {computation!r}")


def inject_views(kafka, env, lines):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "kwheel",
            "inject",
            REF,
            "views",
            "-b",
            kafka.bootstrap,
            "--no-final",
        ],
        env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr


def test_ui_shows_the_graph_and_live_numbers(kafka, name, workers, ui_server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    setup_topics(kafka.bootstrap, tutorial(name))
    w = workers(REF, name, slot="s0")
    url = ui_server(name)
    port = int(url.rsplit(":", 1)[1].strip("/"))
    with pytest.raises(OSError):  # 127.0.0.1 only by default
        socket.create_connection(("127.0.0.2", port), timeout=2).close()
    with urllib.request.urlopen(url + "api/status", timeout=60) as r:
        assert json.load(r)["pipeline"] == name

    browser.get(url)
    state = browser.find_element(By.ID, "state")
    wait_until(lambda: state.get_attribute("data-state") == "ok", 30, "the page's first status")
    nodes = {
        n.get_attribute("data-node")
        for n in browser.find_elements(By.CSS_SELECTOR, "svg.graph [data-node]")
    }
    assert nodes == {
        "injector:views",
        "stream:views",
        "stream:visits",
        "stream:page_minutes",
        "stream:rejected",
        "computation:per_user",
        "computation:per_minute",
    }
    edges = {
        e.get_attribute("data-edge")
        for e in browser.find_elements(By.CSS_SELECTOR, "svg.graph [data-edge]")
    }
    assert {"stream:views>computation:per_user", "computation:per_user>stream:rejected"} <= edges
    assert "per_user" in browser.find_element(By.CSS_SELECTOR, "svg.graph").text
    assert cell(browser, "per_user", "processed") == "0"
    html = browser.page_source
    assert kafka.bootstrap not in html  # no settings on the page

    now = int(time.time() * 1000)
    views = [
        {"user": f"u{i % 23}", "page": f"/p{i % 7}", "ts": now - 120_000 + i * 100}
        for i in range(1200)
    ]
    views.append({"user": "u1", "ts": now})  # no page: per_user raises, the record is dead-lettered
    path = tmp_path / "views.jsonl"
    path.write_text("".join(json.dumps(v) + "\n" for v in views))
    polls = int(state.get_attribute("data-polls"))
    inject_views(kafka, {"KWHEEL_TEST_PIPELINE": name, "TUTORIAL_VIEWS": str(path)}, views)

    # the open page follows on its own: no reload
    wait_until(
        lambda: cell(browser, "per_user", "processed") == "1,200",
        60,
        "per_user's processed count on the page",
    )
    wait_until(
        lambda: cell(browser, "per_minute", "processed") == "1,200",
        60,
        "per_minute's processed count",
    )
    wait_until(
        lambda: cell(browser, "per_user", "dead_lettered") == "1", 30, "the dead letter on the page"
    )
    assert int(state.get_attribute("data-polls")) > polls
    summary = [
        t
        for t in browser.find_elements(By.CSS_SELECTOR, "svg.graph text.live")
        if t.get_attribute("data-computation") == "per_user"
    ]
    assert summary[0].text.startswith("1,200 processed")
    wait_until(
        lambda: re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3}", cell(browser, "per_user", "low_watermark")),
        30,
        "a low watermark on the page",
    )
    wait_until(
        lambda: browser.find_elements(
            By.CSS_SELECTOR, '#injectors tr[data-producer="injector:views/0"]'
        ),
        30,
        "the injector's row",
    )

    shot = tmp_path / "ui.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    if os.environ.get("KWHEEL_TEST_UI_SCREENSHOT"):  # refresh the picture in the docs
        shutil.copyfile(shot, os.environ["KWHEEL_TEST_UI_SCREENSHOT"])
    assert w.stop() == 0


def test_ui_page_reports_an_unreachable_broker(tmp_path, browser):
    """The page says the status is unavailable instead of showing stale or empty numbers."""
    from selenium.webdriver.common.by import By

    from kwheel.config import WorkerConfig
    from kwheel.ui import make_server

    def broken():
        raise ConnectionError("broker unreachable")

    import threading

    server = make_server(tutorial("t"), WorkerConfig(), "127.0.0.1", 0, fetch=broken)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        browser.get(f"http://127.0.0.1:{server.server_port}/")
        state = browser.find_element(By.ID, "state")
        wait_until(lambda: state.get_attribute("data-state") == "error", 30, "the error state")
        assert "broker unreachable" in state.text
        assert cell(browser, "per_user", "processed") == "…"
    finally:
        server.shutdown()
        server.server_close()
