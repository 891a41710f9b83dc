"""Runtime ``browser``: an exported web page (``--format web``) in headless Chromium, driven by Playwright.

``load`` serves the page's folder on 127.0.0.1 (``runtimes.web_server``),
opens ``index.html?model=FILE`` and waits until the page has loaded the model
with onnxruntime-web (or shows why it could not). ``infer`` turns the float
batch back into the exact uint8 pixels (``pixels_from_input``) and hands them
to ``window.rtool.classifyPixels``: the page puts each image on its
model-input canvas, reads it back with the code that reads a chosen image,
and runs its own onnxruntime-web session. The page returns probabilities;
their logarithm is returned (the logits up to a constant per row, which
parity compares with the eager model's log-softmax).

One Chromium serves the whole process (launched on first use, closed at
exit); each loaded file gets its own page. Chromium is Debian's package
(``apt-get install -y chromium``) or any binary named by RTOOL_CHROMIUM;
``playwright install`` is not needed. The flags keep a headless Chromium
from reaching for the network on its own.
"""

from __future__ import annotations

import atexit
import base64
import os
import shutil
import threading
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from runtimes import Runtime, error_summary, log_probabilities, register_runtime
from runtimes.cards import check_card_fits_input, onnx_input_dims, read_card
from runtimes.onnxruntime_runtime import pixels_from_input
from runtimes.web_server import CARD_FILE, PAGE_FILE, BackgroundServer
from toolkit.devices import parse_device
from toolkit.errors import BadInputError, UnavailableError
from toolkit.fileio import atomic_path
from toolkit.safety import check_onnx_file

CHROMIUM_ENV = "RTOOL_CHROMIUM"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
INSTALL_COMMAND = "apt-get install -y chromium"
CHROMIUM_FLAGS = (
    "--no-sandbox",  # as root, and in containers without user namespaces
    "--disable-gpu",  # no GPU here; the page uses the wasm backend
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",  # without these, Chromium's own connections get refused in bursts
    "--disable-component-update",
    "--disable-sync",
)
TIMEOUT_MS = 120_000  # loading 14 MB of wasm and the model on a busy 2-core machine
MAX_CALL_BYTES = 64 << 20  # pixels per classifyPixels call (base64 through the DevTools protocol)


def chromium_path() -> str | None:
    """The Chromium binary to launch: RTOOL_CHROMIUM, else the first of CHROMIUM_NAMES on PATH."""
    named = os.environ.get(CHROMIUM_ENV)
    if named:
        return named if Path(named).is_file() and os.access(named, os.X_OK) else None
    return next((found for name in CHROMIUM_NAMES if (found := shutil.which(name))), None)


class SharedBrowser:
    """One headless Chromium per process, launched on first use (Playwright's sync API: one thread)."""

    playwright: Any = None
    browser: Any = None
    thread: int | None = None

    @classmethod
    def get(cls) -> Any:
        if cls.browser is not None and cls.browser.is_connected():
            if threading.get_ident() != cls.thread:
                raise UnavailableError("the browser runtime runs only in the thread that first used it (Playwright)")
            return cls.browser
        cls.close()
        executable = chromium_path()
        if executable is None:
            raise UnavailableError(f"Chromium is not installed (run as root: {INSTALL_COMMAND})")
        from playwright.sync_api import Error, sync_playwright

        try:
            cls.playwright = sync_playwright().start()
            cls.browser = cls.playwright.chromium.launch(
                executable_path=executable, headless=True, args=list(CHROMIUM_FLAGS), timeout=TIMEOUT_MS
            )
        except Error as e:
            cls.close()
            raise UnavailableError(f"Chromium ({executable}) did not start: {error_summary(e)}") from None
        cls.thread = threading.get_ident()
        return cls.browser

    @classmethod
    def close(cls) -> None:
        browser, playwright = cls.browser, cls.playwright
        cls.playwright = cls.browser = cls.thread = None
        for release in (browser and browser.close, playwright and playwright.stop):
            if release:
                try:
                    release()
                except Exception:  # already gone (the driver exited first): nothing left to release
                    pass


atexit.register(SharedBrowser.close)


def page_files(path: Path) -> None:
    """Refuse a model file that does not sit in an exported page's folder."""
    missing = [name for name in (PAGE_FILE, CARD_FILE) if not (path.parent / name).is_file()]
    if missing:
        raise BadInputError(
            f"{path.name} is not in an exported web page (no {missing[0]} beside it); "
            f"write one with `rtool export CHECKPOINT --format web`"
        )


@register_runtime
class BrowserRuntime(Runtime):
    """The page's own code path in headless Chromium; options: none (``threads`` is accepted and unused)."""

    name = "browser"
    suffixes = ()  # opens web/model*.onnx, which --runtime onnxruntime would take by ending
    formats = ("web",)
    order = 35
    devices = ("cpu",)

    @classmethod
    def available(cls) -> tuple[bool, str]:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            return False, "playwright is not installed (pip install 'rtool[browser]')"
        if chromium_path() is None:
            where = f" ({CHROMIUM_ENV} does not name a program)" if os.environ.get(CHROMIUM_ENV) else ""
            return False, f"Chromium is not installed{where} (run as root: {INSTALL_COMMAND})"
        return True, ""

    def load(self, artifact_path: str | Path, device: str = "auto") -> None:
        if parse_device(device)[0] == "cuda":  # the page's backend is wasm: asking for a GPU changes nothing
            self.notes.append(f"--device {device}: the browser runtime runs on the CPU (onnxruntime-web wasm)")
        path = self.expect_file(artifact_path)
        page_files(path)
        self.card = read_card(path)
        dims, raw_pixels = onnx_input_dims(check_onnx_file(path))
        if not raw_pixels or self.card.output != "probabilities":
            raise BadInputError(f"{path.name} is not a web page's model (uint8 pixels in, probabilities out)")
        check_card_fits_input(self.card, dims, raw_pixels, path)
        self.max_batch = max(1, MAX_CALL_BYTES // int(np.prod(self.card.input.shape)))
        self.server = BackgroundServer(path.parent)
        self.page = SharedBrowser.get().new_page(viewport={"width": 800, "height": 900})
        self.page.set_default_timeout(TIMEOUT_MS)
        self.page.goto(f"{self.server.url}{PAGE_FILE}?model={quote(path.name)}")
        self.page.wait_for_function("() => window.rtool !== undefined || !document.getElementById('error').hidden")
        loaded, message = self.page.evaluate(
            "async () => { try { return [await window.rtool.ready, '']; } catch (e) {"
            " return ['', document.getElementById('error').textContent || String(e)]; } }"
        )
        if message or loaded != path.name:
            why = message or f"the page loads only the model files rtool names, not {path.name}"
            raise BadInputError(f"the page in {path.parent} could not load {path.name}: {why}")
        self.device = f"Chromium {SharedBrowser.get().version.split('.')[0]} (onnxruntime-web wasm, 1 thread)"

    def _run(self, batch: np.ndarray) -> np.ndarray:
        pixels = pixels_from_input(batch, self.card.input)
        try:
            result = self.page.evaluate(
                "([data, count]) => window.rtool.classifyPixels(data, count)",
                [base64.b64encode(pixels.tobytes()).decode("ascii"), len(pixels)],
            )
        except Exception as e:  # Playwright's Error: the page's own exception, e.g. onnxruntime-web failing
            raise BadInputError(f"the page failed to classify the batch ({error_summary(e)})") from None
        self.page_ms = float(result["ms"])
        probabilities = np.frombuffer(base64.b64decode(result["probabilities"]), dtype=np.float32)
        return log_probabilities(probabilities.reshape(len(pixels), self.card.num_classes))

    def show(self, pixels: np.ndarray, screenshot: str | Path) -> dict[str, Any]:
        """Classify one uint8 (C, H, W) image as a user's image is, then save a PNG of the page."""
        data = base64.b64encode(np.ascontiguousarray(pixels.transpose(1, 2, 0)).tobytes()).decode("ascii")
        self.page.bring_to_front()  # a background page may skip painting
        shown = self.page.evaluate("(data) => window.rtool.showPixels(data)", data)
        with atomic_path(Path(screenshot)) as tmp:
            self.page.screenshot(path=str(tmp), type="png", full_page=True)
        return shown

    def close(self) -> None:
        page, server = getattr(self, "page", None), getattr(self, "server", None)
        self.page = self.server = None
        if page is not None:
            try:
                page.close()
            except Exception:  # the browser went away already
                pass
        if server is not None:
            server.close()
