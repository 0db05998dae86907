"""A real moto server (S3, EMR, IAM APIs) on 127.0.0.1 at a random free port, run as a subprocess."""

import contextlib
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/moto-api/data.json", timeout=1):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def moto_server(timeout_s: float = 60) -> Iterator[str]:
    """Start `python -m moto.server` on loopback; yield its URL; stop it afterwards."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + timeout_s
        while not _ready(url):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto server did not start on {url}: {process.stderr.read().decode()[-2000:]}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def set_auth(url: str, unauthenticated_requests: float) -> None:
    """Make moto enforce IAM after this many more requests (0: from now on; inf: never)."""
    request = urllib.request.Request(
        f"{url}/moto-api/reset-auth",
        data=str(unauthenticated_requests).encode(),
        headers={"Content-Type": "text/plain"},  # a form content type would make Flask swallow the body
    )
    urllib.request.urlopen(request, timeout=5).close()
