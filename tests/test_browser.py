"""The reports and the index render in headless Chromium: no broken image, no console error.

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: commands
in on fd 3, replies and events out on fd 4, NUL-terminated JSON), so no websocket or browser
library is needed. Debian's ``chromium`` is installed by ``make test`` (as root) and ``.ci/run``.
"""

import base64
import json
import os
import select
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import MANIFEST_SHAPES
from PIL import Image

WIDTH, HEIGHT = 1280, 2000
TIMEOUT = 60  # seconds for one DevTools reply or page load
# Wait for every <img> to load or fail, then list the ones that did not decode.
BROKEN_IMAGES_JS = """(async () => {
  const images = Array.from(document.images);
  await Promise.all(images.map((img) => img.decode().catch(() => null)));
  return {
    n_images: images.length,
    broken: images.filter((img) => !img.complete || img.naturalWidth === 0)
      .map((img) => `${img.alt || "(no alt)"}: ${img.currentSrc.slice(0, 60) || "(no src)"}`),
  };
})()"""
TINY_PNG = (  # 1 x 1 red pixel
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
)


def find_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="session")
def chromium() -> str:
    binary = find_chromium()
    if binary is None:
        msg = (
            "Chromium is not installed (no `chromium` or `chromium-browser` on PATH). Install "
            "Debian's package: `apt-get install -y --no-install-recommends chromium` (`make "
            "test` does this when run as root)."
        )
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail(msg)
        pytest.skip(msg)
    return binary


@dataclass
class Page:
    """What one page load produced."""

    n_images: int
    broken_images: list[str]
    console_errors: list[str]
    external_requests: list[str]
    screenshot: Path

    def problems(self) -> list[str]:
        return [
            *(f"broken image {b}" for b in self.broken_images),
            *(f"console error {e}" for e in self.console_errors),
            *(f"request outside the file {u}" for u in self.external_requests),
        ]


@dataclass
class DevTools:
    """A headless Chromium and a minimal DevTools protocol client on its debugging pipe."""

    binary: str
    profile: Path
    process: subprocess.Popen = field(init=False)
    events: list[dict] = field(init=False, default_factory=list)

    def __post_init__(self):
        to_browser, self._write = os.pipe()
        self._read, from_browser = os.pipe()

        def on_fds_3_and_4():  # in the child, before exec: the pipe ends chromium expects
            read_end, write_end = os.dup(to_browser), os.dup(from_browser)
            os.dup2(read_end, 3)
            os.dup2(write_end, 4)

        self.log = (self.profile / "chromium.log").open("w")
        self.process = subprocess.Popen(  # preexec_fn only dups fds: async-signal safe
            [
                self.binary,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--remote-debugging-pipe",
                f"--user-data-dir={self.profile / 'profile'}",
                f"--window-size={WIDTH},{HEIGHT}",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            pass_fds=(3, 4),
            preexec_fn=on_fds_3_and_4,
        )
        os.close(to_browser)
        os.close(from_browser)
        self._buffer = b""
        self._next_id = 0

    def _receive(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._read], [], [], left)[0]:
                msg = f"Chromium sent nothing for {TIMEOUT} s; see {self.log.name}"
                raise TimeoutError(msg)
            chunk = os.read(self._read, 1 << 20)
            if not chunk:
                msg = f"Chromium closed its DevTools pipe; see {self.log.name}"
                raise ConnectionError(msg)
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, session: str | None = None, **params) -> dict:
        self._next_id += 1
        command = {"id": self._next_id, "method": method, "params": params}
        if session:
            command["sessionId"] = session
        os.write(self._write, json.dumps(command).encode() + b"\0")
        deadline = time.monotonic() + TIMEOUT
        while True:
            message = self._receive(deadline)
            if message.get("id") != self._next_id:
                self.events.append(message)
            elif "error" in message:
                msg = f"DevTools {method} failed: {message['error']}"
                raise RuntimeError(msg)
            else:
                return message["result"]

    def wait_for(self, method: str, session: str) -> None:
        deadline = time.monotonic() + TIMEOUT
        while not any(
            e.get("method") == method and e.get("sessionId") == session for e in self.events
        ):
            self.events.append(self._receive(deadline))

    def open(self, path: Path, screenshot: Path) -> Page:
        """Load ``path``, wait for its images, and screenshot the first WIDTH x HEIGHT pixels."""
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable", session)
        self.send(
            "Emulation.setDeviceMetricsOverride",
            session,
            width=WIDTH,
            height=HEIGHT,
            deviceScaleFactor=1,
            mobile=False,
        )
        navigation = self.send("Page.navigate", session, url=path.resolve().as_uri())
        assert "errorText" not in navigation, f"{path}: {navigation['errorText']}"
        self.wait_for("Page.loadEventFired", session)
        images = self.send(
            "Runtime.evaluate",
            session,
            expression=BROKEN_IMAGES_JS,
            awaitPromise=True,
            returnByValue=True,
        )["result"]["value"]
        png = self.send("Page.captureScreenshot", session, format="png")["data"]
        screenshot.write_bytes(base64.b64decode(png))
        self.send("Target.closeTarget", targetId=target)
        events = [e for e in self.events if e.get("sessionId") == session]
        self.events = [e for e in self.events if e.get("sessionId") != session]
        return Page(
            images["n_images"],
            images["broken"],
            console_errors(events),
            external_requests(events),
            screenshot,
        )

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (ConnectionError, TimeoutError, OSError):
            pass
        try:
            self.process.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._write)
        os.close(self._read)
        self.log.close()


def console_errors(events: list[dict]) -> list[str]:
    """Console errors, uncaught exceptions and browser-logged errors (e.g. failed loads)."""
    errors = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            args = params.get("args", [])
            errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in args))
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            errors.append(details.get("exception", {}).get("description") or details["text"])
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            entry = params["entry"]
            errors.append(f"{entry['text']} {entry.get('url', '')}".strip())
    return errors


def external_requests(events: list[dict]) -> list[str]:
    """Requests for anything but the page's own file and data: URIs (it must open offline)."""
    urls = [
        e["params"]["request"]["url"]
        for e in events
        if e.get("method") == "Network.requestWillBeSent"
    ]
    return [u for u in urls if not u.startswith(("data:", "file:", "about:"))]


@pytest.fixture(scope="session")
def browser(chromium, tmp_path_factory):
    devtools = DevTools(chromium, tmp_path_factory.mktemp("chromium"))
    yield devtools
    devtools.close()


def assert_screenshot(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n"), f"{path} is not a PNG"
    with Image.open(path) as image:
        image.load()
        assert image.size == (WIDTH, HEIGHT)
        low, high = zip(*image.convert("RGB").getextrema(), strict=True)
        assert min(low) < max(high), f"{path} is one flat colour: nothing rendered"


GOOD_PAGE = f'<h1>ok</h1><img alt="dot" src="data:image/png;base64,{TINY_PNG}">'
BAD_PAGES = {
    "truncated_data_uri": '<img alt="bad" src="data:image/png;base64,AAAA">',
    "missing_file": '<img alt="gone" src="figures/missing.png">',
    "console_error": "<script>console.error('x')</script>",
    "uncaught_exception": "<script>undefinedFunction()</script>",
    "remote_resource": '<link rel="stylesheet" href="http://127.0.0.1:9/style.css">',
}


def test_a_clean_page_passes(browser, tmp_path):
    page_file = tmp_path / "good.html"
    page_file.write_text(f"<!doctype html><html><body>{GOOD_PAGE}</body></html>")
    page = browser.open(page_file, tmp_path / "good.png")
    assert page.n_images == 1 and page.problems() == []
    assert_screenshot(page.screenshot)


@pytest.mark.parametrize("defect", list(BAD_PAGES))
def test_negative_controls_are_caught(browser, tmp_path, defect):
    page_file = tmp_path / f"{defect}.html"
    page_file.write_text(f"<!doctype html><html><body>{GOOD_PAGE}{BAD_PAGES[defect]}</body></html>")
    page = browser.open(page_file, tmp_path / f"{defect}.png")
    if defect in ("truncated_data_uri", "missing_file"):
        assert len(page.broken_images) == 1 and page.n_images == 2
    if defect in ("console_error", "uncaught_exception"):
        assert page.broken_images == [] and len(page.console_errors) == 1
    if defect == "remote_resource":
        assert page.external_requests == ["http://127.0.0.1:9/style.css"]
    assert page.problems()


@pytest.mark.e2e
@pytest.mark.parametrize("dataset", list(MANIFEST_SHAPES))
def test_report_renders_without_broken_images_or_errors(browser, run, tmp_path, dataset):
    page = browser.open(run / "results" / dataset / "report.html", tmp_path / f"{dataset}.png")
    assert page.problems() == []
    assert page.n_images >= 4  # QC, clustering, annotation figures at least
    assert_screenshot(page.screenshot)


@pytest.mark.e2e
def test_index_renders_without_errors(browser, run, tmp_path):
    page = browser.open(run / "results" / "index.html", tmp_path / "index.png")
    assert page.problems() == []
    assert_screenshot(page.screenshot)
