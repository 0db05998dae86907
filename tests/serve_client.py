"""Serve tests' helpers: `fruits serve`'s app on a loopback port in a thread, and a plain HTTP client."""

import contextlib
import json
import threading
import time
import urllib.error
import urllib.request
import uuid

import uvicorn

from fruits_assets.app.api import create_app
from fruits_assets.app.service import ServeOptions
from tests.helpers import free_port


@contextlib.contextmanager
def running_server(options: ServeOptions, timeout: float = 120):
    """The app under uvicorn on 127.0.0.1 in a thread of this process, ready (its classifier loaded); yields the
    base URL and the app, stops it afterwards."""
    app = create_app(options)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.config.port}"
    try:
        wait_ready(base, timeout)
        yield base, app
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def wait_ready(base: str, timeout: float) -> dict:
    """Poll /healthz until it says ready; its body."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            status, body = request(base, "/healthz", method="GET")
            if status == 200 and body["ready"]:
                return body
        time.sleep(0.2)
    raise TimeoutError(f"{base} did not become ready in {timeout} s")


def request(base: str, path: str, data: bytes | None = None, headers: dict | None = None, method: str = "POST"):
    """(status, JSON body) of one request; 4xx and 5xx answers are returned, not raised."""
    sent = urllib.request.Request(base + path, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(sent, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def multipart(data: bytes, field: str = "photo", filename: str = "photo.jpg") -> tuple[bytes, dict]:
    """A multipart/form-data body with one file field, and its headers."""
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    body = head + data + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def classify(base: str, data: bytes, filename: str = "photo.jpg", field: str = "photo"):
    """POST /classify with a multipart upload."""
    body, headers = multipart(data, field, filename)
    return request(base, "/classify", body, headers)
