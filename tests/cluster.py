"""A real Spark standalone cluster on 127.0.0.1: one master and N workers as separate processes (pyspark's spark-class).

`python -m tests.cluster` starts one for manual use and prints its master URL until Ctrl-C.
"""

import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from contextlib import contextmanager, suppress
from pathlib import Path

import pyspark

SPARK_CLASS = Path(pyspark.__file__).parent / "bin" / "spark-class"
MASTER = "org.apache.spark.deploy.master.Master"
WORKER = "org.apache.spark.deploy.worker.Worker"


def _start(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "SPARK_HOME": str(SPARK_CLASS.parents[1]), "SPARK_LOCAL_IP": "127.0.0.1"}
    handle = log.open("w")
    return subprocess.Popen(
        [str(SPARK_CLASS), *args], stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )


def _wait_for(log: Path, pattern: str, timeout: float = 90) -> re.Match:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = re.search(pattern, log.read_text() if log.exists() else "")
        if match:
            return match
        time.sleep(0.3)
    raise TimeoutError(f"{pattern!r} not seen in {log} within {timeout}s:\n{log.read_text()[-3000:]}")


def stop(process: subprocess.Popen) -> None:
    """Kill a daemon and everything it started (a worker's executors included)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


class Cluster:
    """Handles on the running master and workers."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.master: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self.url = ""
        self.ui = ""

    def start_master(self) -> None:
        log = self.workdir / "master.log"
        self.master = _start([MASTER, "--host", "127.0.0.1", "--port", "0", "--webui-port", "0"], log)
        self.url = _wait_for(log, r"Starting Spark master at (spark://127\.0\.0\.1:\d+)").group(1)
        self.ui = _wait_for(log, r"started at (http://[\w.\-]+:\d+)").group(1)

    def start_worker(self, index: int, memory: str) -> None:
        log, work = self.workdir / f"worker{index}.log", self.workdir / f"work{index}"
        args = [WORKER, self.url, "--host", "127.0.0.1", "--port", "0", "--webui-port", "0"]
        self.workers.append(_start([*args, "--cores", "1", "--memory", memory, "--work-dir", str(work)], log))

    def state(self) -> dict:
        """The master's JSON status (workers, applications)."""
        with urllib.request.urlopen(f"{self.ui}/json/", timeout=10) as response:
            return json.load(response)

    def wait_for_workers(self, n: int, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sum(w["state"] == "ALIVE" for w in self.state()["workers"]) >= n:
                return
            time.sleep(0.5)
        raise TimeoutError(f"{n} workers did not register with {self.url}")

    def stop(self) -> None:
        for process in [*self.workers, self.master]:
            if process is not None:
                stop(process)


@contextmanager
def standalone_cluster(workdir: Path, workers: int = 2, worker_memory: str = "3g"):
    """Start a master and `workers` one-core workers on 127.0.0.1 with random ports; stop them all on exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    cluster = Cluster(workdir)
    try:
        cluster.start_master()
        for index in range(workers):
            cluster.start_worker(index, worker_memory)
        cluster.wait_for_workers(workers)
        yield cluster
    finally:
        cluster.stop()


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp, standalone_cluster(Path(tmp)) as running:
        print(f"master {running.url}  UI {running.ui}  (Ctrl-C stops it)", flush=True)
        with suppress(KeyboardInterrupt):
            signal.pause()
