"""`fruits serve` under load: wrk on loopback at 1, 8 and 64 clients posting Test photos, beside the batch throughput
of bare ONNX Runtime fp32 and of the bare engine the server chose, on the same photos, in one invocation; JSON out
(bench/results/serve.json)."""

import argparse
import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

from bench.common import DEFAULT_ROOT, REPO, SHARED, stratified
from fruits_assets.deploy.settings import Settings
from spark_code.featurize.cnn import CnnEngine, CnnSpec
from spark_code.featurize.decode import try_decode
from tests.helpers import free_port
from tests.serve_client import wait_ready

logger = logging.getLogger("bench")
WRK_SCRIPT = REPO / "bench" / "serve_wrk.lua"
TARGETS = {"throughput_vs_bare_fp32_at_64": 1.0, "p50_ms_at_1": 40, "peak_rss_mib": 2048}


def bare(photos: list[Path], weights: str, batch: int, engine: str, passes: int = 2) -> dict:
    """A bare engine (every core): read, decode and featurize the photos in batches; images/s after the load."""
    from bench.sample_classifier import cnn

    predict = cnn(weights, Settings.from_env().onnx_cache, engine)
    size = CnnSpec().input_size
    predict(np.stack([try_decode(photos[0].read_bytes(), size)[0]] * batch))  # warm-up
    started, images = time.perf_counter(), 0
    for _ in range(passes):
        for i in range(0, len(photos), batch):
            pixels = [try_decode(p.read_bytes(), size)[0] for p in photos[i : i + batch]]
            predict(np.stack(pixels))
            images += len(pixels)
    seconds = time.perf_counter() - started
    return {
        "engine": engine,
        "images": images,
        "batch_size": batch,
        "seconds": round(seconds, 2),
        "images_per_s": round(images / seconds, 1),
    }


def sample_models(photos_root: Path, weights: str, per_class: int, folder: str) -> str:
    """A classifier of every Training class (`per_class` photos each), for a machine without a materialized one."""
    from bench.sample_classifier import cnn, train_and_save
    from fruits_assets.deploy.spark_conf import local_session

    spark = local_session("local[2]")
    try:
        training = SHARED / "fruits-360" / "Training"
        classes = sorted(p.name for p in training.iterdir() if p.is_dir())
        train_and_save(spark, cnn(weights), (training, photos_root), classes, folder, n=(per_class, 2))
    finally:
        spark.stop()
    return folder


class RssPeak(threading.Thread):
    """The peak RSS of one process (the server), sampled every 0.2 s."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.process, self.peak, self.stop = psutil.Process(pid), 0, threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.2):
            with contextlib.suppress(psutil.NoSuchProcess):
                self.peak = max(self.peak, self.process.memory_info().rss)


def wrk(base: str, listing: Path, clients: int, seconds: int, max_requests: int) -> dict:
    """One wrk run: `clients` connections, at most `seconds` and about `max_requests` requests; its JSON summary."""
    threads = min(2, clients)
    cmd = ["wrk", f"-t{threads}", f"-c{clients}", f"-d{seconds}s", "--timeout", "30s", "--latency", "-s"]
    cmd += [str(WRK_SCRIPT), f"{base}/classify", "--", str(listing), str(max(1, max_requests // threads))]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=seconds + 60)
    raw = json.loads(done.stdout.strip().splitlines()[-1])
    return {
        "clients": clients,
        "requests": raw["requests"],
        "seconds": round(raw["duration_us"] / 1e6, 2),
        "requests_per_s": round(raw["requests"] / (raw["duration_us"] / 1e6), 1),
        "p50_ms": round(raw["p50_us"] / 1000, 1),
        "p90_ms": round(raw["p90_us"] / 1000, 1),
        "p99_ms": round(raw["p99_us"] / 1000, 1),
        "errors": raw["non_2xx"] + raw["socket_errors"],
    }


@contextlib.contextmanager
def server(models: str, weights: str, log: Path):
    """`fruits serve` on a loopback port, ready; yields (base URL, pid)."""
    port = free_port()
    env = {**os.environ, "FRUITS_WEIGHTS": weights}
    cmd = [sys.executable, "-m", "fruits_assets.app.cli", "serve", "--models", models, "--port", str(port)]
    with log.open("w") as out:
        process = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, 180)
        yield base, process.pid
    finally:
        process.terminate()
        process.wait(timeout=30)


def measure(args: argparse.Namespace, models: str, photos: list[Path], tmp: Path) -> dict:
    """The bare engines first (nothing else running), then the server at each client count."""
    load = round(os.getloadavg()[0], 2)
    fp32 = bare(photos, args.weights, Settings.from_env().batch_size, "onnx")
    chosen = bare(photos, args.weights, Settings.from_env().batch_size, "auto")
    listing = tmp / "photos.txt"
    listing.write_text("\n".join(str(p) for p in photos) + "\n")
    levels = []
    with server(models, args.weights, tmp / "serve.log") as (base, pid):
        wrk(base, listing, 8, 5, 100)  # warm-up: first batches, allocator, page cache
        peak = RssPeak(pid)
        peak.start()
        for clients in args.clients:
            levels.append(wrk(base, listing, clients, args.seconds, args.max_requests))
            logger.info("%s", levels[-1])
        peak.stop.set()
    for level in levels:
        level["throughput_vs_bare_fp32"] = round(level["requests_per_s"] / fp32["images_per_s"], 3)
        level["throughput_vs_bare_engine"] = round(level["requests_per_s"] / chosen["images_per_s"], 3)
    return {
        "load_average_1min_at_start": load,
        "engine": CnnEngine.chosen("auto", CnnSpec(), 0, None).label,
        "bare_fp32": fp32,
        "bare_engine": chosen,
        "levels": levels,
        "server_peak_rss_mib": peak.peak // 2**20,
    }


def verdict(result: dict) -> dict:
    """Each target and whether it was met."""
    by_clients = {level["clients"]: level for level in result["levels"]}
    return {
        "throughput_vs_bare_fp32_at_64 >= 1.0": by_clients[64]["throughput_vs_bare_fp32"]
        >= TARGETS["throughput_vs_bare_fp32_at_64"],
        "p50_ms_at_1 <= 40": by_clients[1]["p50_ms"] <= TARGETS["p50_ms_at_1"],
        "peak_rss_mib <= 2048": result["server_peak_rss_mib"] <= TARGETS["peak_rss_mib"],
        "no_errors": all(level["errors"] == 0 for level in result["levels"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default=None, help="models folder (default: a classifier trained on a sample)")
    parser.add_argument("--weights", default=Settings.from_env().weights)
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="photos to post (Test)")
    parser.add_argument("--photos", type=int, default=262, help="photos to post, spread over the classes")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--seconds", type=int, default=20, help="time bound of each client count")
    parser.add_argument("--max-requests", type=int, default=4000, help="request bound of each client count")
    parser.add_argument("--train-per-class", type=int, default=5, help="Training photos per class (no --models)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "serve.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if shutil.which("wrk") is None:
        raise SystemExit("bench/serve.py needs wrk, the HTTP load tool: apt-get install wrk")
    photos = sorted(p for files in stratified(args.root, args.photos).values() for p in files)
    with tempfile.TemporaryDirectory() as tmp:
        started, load_before = time.time(), os.getloadavg()[0]
        models = args.models or sample_models(args.root, args.weights, args.train_per_class, f"{tmp}/models")
        result = {
            "cores": os.cpu_count(),
            "load_average_1min_before": round(load_before, 2),
            "photos": len(photos),
            "models": "materialized" if args.models else f"trained on {args.train_per_class} Training photos a class",
            "load_tool": "wrk 4.1 (bench/serve_wrk.lua: raw JPEG bodies, Test photos in turn)",
            **measure(args, models, photos, Path(tmp)),
        }
    result["load_average_1min_after"] = round(os.getloadavg()[0], 2)
    result["targets_met"] = verdict(result)
    result["seconds"] = round(time.time() - started, 1)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
