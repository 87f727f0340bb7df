"""The dashboard in a real browser: headless Chromium (Debian's package) driven by Playwright, against
`aiflow daemon` with three local workers on the example's emulated network, its reads behind a token.

The page asks for the token once, shows the plan in force (the units on each node, which links carry
its traffic), follows requests as they are served, and changes by itself when a link is cut through
the emulation API and the daemon switches plans. Keyboard only, it reaches the link history; at a
phone's width nothing scrolls sideways. With AIFLOW_DASHBOARD_SCREENSHOTS=DIR set it also writes the
screenshots docs/daemon.md shows (dashboard-before.png, -after.png, -phone.png) into DIR.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from orchestrator.demo import write_test_images

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ROOT = Path(__file__).resolve().parents[2]
NETWORK = ROOT / "examples" / "daemon.network.yaml"
PROFILE = ROOT / "examples" / "tiny-captioner.profile.json"
TOKEN = "dashboard-secret-41c7"
SWITCH_WAIT_MS = 45_000


def spans(units: list[int]) -> str:
    """"0-2, 5" for units 0, 1, 2 and 5: written here again, not imported, as the test's own oracle."""
    out, start = [], None
    for i, u in enumerate(units):
        if start is None:
            start = u
        if i + 1 == len(units) or units[i + 1] != u + 1:
            out.append(str(start) if start == u else f"{start}-{u}")
            start = None
    return ", ".join(out)


def expected_units(assignment: list[str], node: str) -> str:
    mine = [u for u, n in enumerate(assignment) if n == node]
    return f"units {spans(mine)} ({len(mine)})" if mine else "no units"


def carrying(assignment: list[str]) -> set[str]:
    """On the chain phone - edge - cloud with the phone as source and sink, a link carries the plan's traffic
    exactly when some unit runs beyond it."""
    links = set()
    if {"edge", "cloud"} & set(assignment):
        links.add("edge~phone")
    if "cloud" in assignment:
        links.add("cloud~edge")
    return links


def screenshot(page, path: Path, *, full_page: bool = True) -> None:
    """A PNG of the page, in 64 colours: small enough to commit."""
    page.screenshot(path=str(path), full_page=full_page)
    with Image.open(path) as im:
        im.convert("RGB").quantize(colors=64).save(path, optimize=True)


def check_plan(page, plan: dict) -> None:
    """The page shows `plan` (as /v1/plan gives it): its version, every node's units, the links it uses."""
    assert f"Plan v{plan['version']}," in page.text_content("#plan-line")
    for node in ("phone", "edge", "cloud"):
        shown = page.text_content(f'#topology [data-node="{node}"] .units')
        assert shown == expected_units(plan["assignment"], node), (node, shown)
        cell = page.text_content(f'#nodes-table tr[data-node="{node}"] td.units')
        mine = [u for u, n in enumerate(plan["assignment"]) if n == node]
        assert cell.startswith(spans(mine) if mine else "none"), (node, cell)
    for key in ("edge~phone", "cloud~edge"):
        cls = page.get_attribute(f'#topology [data-link="{key}"]', "class")
        label = page.text_content(f'#topology [data-link="{key}"] .traffic')
        if key in carrying(plan["assignment"]):
            assert "carries" in cls and label.endswith("per request"), (key, cls, label)
        else:
            assert "carries" not in cls and label == "no plan traffic", (key, cls, label)


def playwright_or_skip() -> Any:
    """Playwright's sync API with the system Chromium; skipped with the reason where either is missing, except
    in CI (CI=true), which installs both and must run this test."""
    why = None
    if CHROMIUM is None:
        why = "no chromium on this machine (Debian's package `chromium`; .ci/run installs it)"
    try:
        from playwright import sync_api
    except ImportError:
        why = why or "the playwright package is not installed (pip install -e '.[dev]')"
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(f"{why}: CI must run the dashboard's browser test")
        pytest.skip(why)
    return sync_api


def test_the_dashboard_follows_the_daemon_live(tmp_path: Path) -> None:
    sync_api = playwright_or_skip()
    shots = Path(os.environ.get("AIFLOW_DASHBOARD_SCREENSHOTS") or tmp_path)
    image = write_test_images(tmp_path, 1)[0].path
    request = {"image": base64.b64encode(image.read_bytes()).decode()}
    auth = {"Authorization": f"Bearer {TOKEN}"}
    env = dict(os.environ, AIFLOW_DATABASE_URL=f"sqlite:///{tmp_path / 'h.db'}")
    aiflow = str(Path(sys.executable).parent / "aiflow")
    proc = subprocess.Popen([aiflow, "daemon", "--model", "tiny-captioner", "--network", str(NETWORK),
                             "--profile", str(PROFILE), "--api", "127.0.0.1:0", "--probe-interval", "1",
                             "--solve-interval", "30", "--dilation", "6", "--token", TOKEN, "--private-reads"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line.startswith("aiflow daemon: serving http://127.0.0.1:"), (line, proc.stderr.read())
        url = line.split()[-1]
        api = httpx.Client(base_url=url, headers=auth, timeout=120, trust_env=False)
        plan1 = api.get("/v1/plan").json()
        assert plan1["version"] == 1 and "cloud" in plan1["assignment"]      # the first plan offloads

        with sync_api.sync_playwright() as pw:
            # root in CI: Chromium's sandbox needs user namespaces a container may not give
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            streams: list[str] = []
            page.on("request", lambda r: streams.append(r.url) if r.url.endswith("/v1/events") else None)
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url)

            # -- the token, asked once: a wrong one is refused, the right one kept for the tab -----------
            page.wait_for_selector("#token-form", state="visible")
            assert page.is_hidden("#main")
            page.fill("#token", "not-the-token")
            page.keyboard.press("Enter")
            page.wait_for_function("() => document.querySelector('#token-why').textContent.includes('refused')")
            page.fill("#token", TOKEN)
            page.keyboard.press("Enter")
            page.wait_for_selector("#topology [data-node]")
            streams.clear()
            page.reload()
            page.wait_for_selector("#topology [data-node]")
            assert page.is_hidden("#token-form")

            # -- the plan in force, and requests as they are served ------------------------------------
            check_plan(page, plan1)
            for _ in range(3):
                assert api.post("/v1/requests", json=request).status_code == 200
            page.wait_for_function("() => document.querySelectorAll('#latency-chart circle.measured').length === 3")
            assert "on plan v1" in page.text_content("#latency-summary")
            screenshot(page, shots / "dashboard-before.png")

            # -- a link cut under it: the daemon notices, switches, and the page follows by itself -----
            r = api.post("/v1/emulation/links", json={"a": "phone", "b": "edge", "bandwidth_bps": 1e6})
            assert r.status_code == 200
            page.wait_for_function("() => window.aiflowDashboard.shownVersion === 2", timeout=SWITCH_WAIT_MS)
            shown_at = page.evaluate("window.aiflowDashboard.versionShownAt[2]")
            plan2 = api.get("/v1/plan").json()
            assert plan2["version"] == 2 and set(plan2["assignment"]) == {"phone"}
            check_plan(page, plan2)
            outcomes = page.eval_on_selector_all("#decisions-table tr[data-outcome='switched'] td:nth-child(3)",
                                                 "cells => cells.map(c => c.textContent)")
            assert "switched to v2" in outcomes and "switched to v1" in outcomes
            assert page.is_visible('#latency-chart .switch[data-version="2"]')
            for _ in range(2):
                assert api.post("/v1/requests", json=request).status_code == 200
            page.wait_for_function("() => document.querySelectorAll('#latency-chart circle.measured').length === 5")
            assert "on plan v2" in page.text_content("#latency-summary")
            screenshot(page, shots / "dashboard-after.png")
            delay = shown_at - datetime.fromisoformat(plan2["applied_at"]).timestamp()
            print(f"dashboard: plan v2 shown {delay:.3f} s after the daemon applied it")

            # -- keyboard only: Tab reaches the link chooser, arrows choose another link ---------------
            page.click("h1")
            for _ in range(60):
                page.keyboard.press("Tab")
                if page.evaluate("document.activeElement.id") == "link-select":
                    break
            assert page.evaluate("document.activeElement.id") == "link-select"
            first = page.input_value("#link-select")
            page.keyboard.press("ArrowDown")
            other = page.input_value("#link-select")
            assert other != first
            a, b = {"edge~phone": ("phone", "edge"), "cloud~edge": ("edge", "cloud")}[other]
            page.wait_for_function(f"() => document.querySelector('#link-summary').textContent.startsWith('{a} – {b}')")
            assert "Stored history" in page.text_content("#link-summary")
            # a focused button keeps its focus while updates arrive; Enter on it chooses its link
            page.focus('#links-table tr[data-link="edge~phone"] button')
            drawn = page.evaluate("() => window.aiflowDashboard.state.now")
            page.wait_for_function(f"() => window.aiflowDashboard.state.now > {drawn}")
            assert page.evaluate("() => document.activeElement.closest('tr').dataset.link") == "edge~phone"
            page.keyboard.press("Enter")
            page.wait_for_function("() => document.activeElement.id === 'link-select' "
                                   "&& document.activeElement.value === 'edge~phone'")
            page.wait_for_function("() => document.querySelector('#link-summary').textContent"
                                   ".startsWith('phone – edge')")

            # -- a phone's width: everything still shown, nothing scrolls sideways ---------------------
            page.set_viewport_size({"width": 390, "height": 844})
            page.wait_for_function("() => document.querySelector('#topology svg').getAttribute('width') < 390")
            assert page.evaluate("document.documentElement.scrollWidth") <= 390
            check_plan(page, plan2)
            page.evaluate("window.scrollTo(0, 0)")
            screenshot(page, shots / "dashboard-phone.png", full_page=False)

            # one event stream since the reload: the page was pushed every change, it did not poll
            assert len(streams) == 1, streams
            assert not errors, errors

            # -- the daemon stops with the page open: the stream ends, the page says so ---------------
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
            page.wait_for_selector("#connection[data-state='reconnecting']")
            browser.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in proc.stderr.read()
