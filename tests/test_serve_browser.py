"""The web page at /, in headless Chromium: attach an image, ask, and read the streamed answer from the DOM."""
import shutil

import httpx
import pytest

from test_serve import ask, data_url, png
from tiny import tiny_vlm
from vlmkit.serve.app import ServerThread, create_app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (apt-get install -y chromium)"),
]
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def server():
    with ServerThread(create_app(tiny_vlm(), model_name="tiny")) as s:
        yield s


@pytest.fixture(scope="module")
def page(server):
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        page = browser.new_page()
        outside = []
        # the page must not reach anything but its own server (no CDN, no fonts)
        page.on("request", lambda req: outside.append(req.url) if not req.url.startswith((server.url, "data:")) else None)
        page.goto(server.url + "/")
        page.outside = outside
        yield page
        browser.close()


def test_upload_ask_and_watch_the_answer_stream(server, page, tmp_path):
    raw = png(48, 32, (250, 200, 0), noise=True)
    (tmp_path / "photo.png").write_bytes(raw)
    page.set_input_files("#file", str(tmp_path / "photo.png"))
    page.wait_for_selector("#preview[src^='data:image/png']")
    page.fill("#question", "What colour is this?")
    page.fill("#max-tokens", "24")
    page.click("#ask")
    page.wait_for_function("document.getElementById('status').textContent.startsWith('done')", timeout=60_000)
    answer = page.text_content("#answer")
    expected = httpx.post(f"{server.url}/v1/chat/completions", timeout=60,
                          json={"messages": ask(data_url(raw), "What colour is this?"), "max_tokens": 24}).json()
    assert answer == expected["choices"][0]["message"]["content"] and answer
    assert int(page.get_attribute("#answer", "data-chunks")) > 3  # it arrived in pieces, not at the end
    assert "(length" in page.text_content("#status")
    assert page.outside == []


def test_errors_show_on_the_page(page):
    page.fill("#max-tokens", "5000")  # over the tiny model's context
    page.click("#ask")
    page.wait_for_function("document.getElementById('status').textContent.startsWith('error')", timeout=60_000)
    assert "context" in page.text_content("#status")
    assert page.get_attribute("#status", "class") == "error"
