"""A plain static file server on 127.0.0.1 for an exported web page (``rtool web serve``, the ``browser`` runtime).

Only what a static host does: files under one folder, the MIME types ES
modules and WebAssembly need (``text/javascript`` for ``.mjs``,
``application/wasm``), no directory listings, no special headers (the page
runs onnxruntime-web single-threaded, which needs no cross-origin isolation).
"""

from __future__ import annotations

import functools
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from toolkit.errors import BadInputError

HOST = "127.0.0.1"
PAGE_FILE = "index.html"
CARD_FILE = "card.json"
WEB_DIR = "web"
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".wasm": "application/wasm",
    ".onnx": "application/octet-stream",
    ".png": "image/png",
}


class StaticHandler(SimpleHTTPRequestHandler):
    """SimpleHTTPRequestHandler without directory listings, with module/wasm MIME types, quiet unless asked."""

    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, **TYPES}
    log_requests = False

    def list_directory(self, path: Any) -> None:
        self.send_error(404, "No directory listings")
        return None

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        if self.log_requests:
            super().log_message(format, *args)


def web_folder(path: str | Path) -> Path:
    """The exported page's folder: ``path`` itself, or its ``web/`` (an export folder); else one clear line."""
    folder = Path(path)
    if not folder.is_dir():
        raise BadInputError(f"{folder} is not a folder; give the web/ folder `rtool export --format web` wrote")
    for candidate in (folder, folder / WEB_DIR):
        if (candidate / PAGE_FILE).is_file() and (candidate / CARD_FILE).is_file():
            return candidate
    raise BadInputError(
        f"{folder} holds no exported page ({PAGE_FILE} and {CARD_FILE}); write one with "
        f"`rtool export CHECKPOINT --format web --out {folder}`"
    )


def start_server(folder: Path, port: int = 0, log_requests: bool = False) -> ThreadingHTTPServer:
    """A server for ``folder`` bound to 127.0.0.1:``port`` (0: any free port); not yet serving."""
    if not 0 <= port <= 65535:
        raise BadInputError(f"--port must be 0..65535, got {port}")
    handler = type("Handler", (StaticHandler,), {"log_requests": log_requests})
    try:
        server = ThreadingHTTPServer((HOST, port), functools.partial(handler, directory=str(folder)))
    except OSError as e:
        raise BadInputError(f"cannot listen on {HOST}:{port} ({e.strerror}); choose another --port") from None
    server.daemon_threads = True
    return server


def server_url(server: ThreadingHTTPServer) -> str:
    return f"http://{HOST}:{server.server_address[1]}/"


class BackgroundServer:
    """``start_server`` serving from a daemon thread until ``close``."""

    def __init__(self, folder: Path) -> None:
        self.server = start_server(folder)
        self.url = server_url(self.server)
        self.thread = threading.Thread(target=self.server.serve_forever, name="rtool-web-server", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve(path: str | Path, port: int, announce: Any) -> None:
    """Serve the page in ``path`` until Ctrl-C; ``announce(url, folder)`` is called once it listens."""
    folder = web_folder(path)
    server = start_server(folder, port, log_requests=True)
    announce(server_url(server), folder)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
