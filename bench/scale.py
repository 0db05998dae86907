"""`bench.run --scale N ...`: the cost of one real batch of new photos on a simulated corpus of N photos.

The corpus grows in place from a reference (the --workdir of `bench.run --incremental`: a real main-command output on
the Test photos), N after N, because tables name images by absolute path. For each N: hard links of the reference's
photos under new names bring the root to N files; their batches are synthetic but in the real table layout (raw
rows from the real listing code, feature rows = the source photo's real features plus a little noise, empty
quarantine). An untimed catch-up (a sensor tick, then the main command) lets the real code derive what it derives
(scaled and PCA parts, the classifier's evaluation). Then BATCH new photos arrive and are timed: the sensor's tick
and the run it requests (every asset and check); then the README's main command with nothing new (it lists the
root itself). The new photos stay: the next N includes them.
"""

import json
import logging
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

from bench import main_command
from bench.common import REPO, stratified

logger = logging.getLogger("bench")
BATCH_ROWS = 10_000  # rows per synthetic batch: 100 batches at a million photos
SIM_PREFIX = "sim"


def link_corpus(images: Path, n: int) -> int:
    """Hard-link the root's linked photos under new names until it holds `n` files (or more); the file count."""
    sources = sorted(p for p in images.rglob("*") if p.is_symlink())
    have = sum(1 for p in images.rglob("*") if p.is_file())
    start = sum(1 for p in images.rglob(f"{SIM_PREFIX}*"))
    for i in range(start, start + max(0, n - have)):
        source = sources[i % len(sources)]
        os.link(source.resolve(), source.parent / f"{SIM_PREFIX}{i:07d}_{source.name}")
    return max(n, have)


def add_photos(images: Path, count: int, prefix: str) -> int:
    """Hard-link exactly `count` Training photos into the root's class folders, one class after the other (hard
    links: new files to the listing, where a second symbolic link to a listed file is skipped by rule)."""
    from bench.incremental import NEW_PHOTOS

    by_class = sorted(stratified(NEW_PHOTOS, None).items())
    picked = [(label, files[r]) for r in range(40) for label, files in by_class if r < len(files)][:count]
    for label, path in picked:
        (images / label).mkdir(parents=True, exist_ok=True)
        os.link(path, images / label / f"{prefix}{path.name}")
        path.read_bytes()  # a warm page cache, as for the corpus
    return len(picked)


def _commit_dir(staged: Path, table: Path, key: str) -> None:
    version = table / key / f"v-{time.strftime('%Y%m%dT%H%M%S000000Z', time.gmtime())}-{uuid.uuid4().hex[:8]}"
    version.parent.mkdir(parents=True, exist_ok=True)
    staged.rename(version)
    (version / "_COMMITTED").touch()


def synthesize_batches(spark, images: Path, out: Path, n: int) -> dict:
    """Committed raw/feature/quarantine batches for the hard-linked photos no batch holds yet, in the real layout."""
    import pyarrow.parquet as pq
    from pyspark.sql import functions as F

    from spark_code.ingest import batches
    from spark_code.ingest.images import list_frame

    listing = list_frame(spark, str(images)).frame.filter(F.col("path").contains(f"/{SIM_PREFIX}"))
    known = batches.read_current_rows(spark, str(out), "raw_images").select("path")
    listing = listing.join(known, "path", "left_anti").cache()
    total = listing.count()
    if total == 0:
        return {"synthetic_rows": 0, "synthetic_batches": 0}
    groups = max(1, -(-total // BATCH_ROWS))
    real = batches.read_current_rows(spark, str(out), "cnn_features").select(
        F.col("path").alias("source"), "features", batches.MODEL_COLUMN
    )
    source = F.regexp_replace("path", f"/{SIM_PREFIX}[0-9]+_", "/")
    day = f"2026111{len(str(n))}"  # keys sort before real batches; a new prefix per order of magnitude of N
    key = F.format_string(f"{day}T000000.%03dZ", F.pmod(F.xxhash64("path"), F.lit(groups)))
    rows = listing.withColumn("source", source).join(real, "source").drop("source").withColumn("_key", key)
    noisy = F.transform(
        "features", lambda x, i: F.greatest(x + (F.pmod(F.xxhash64("path", i), 1001) - 500) / 25000, F.lit(0.0))
    )
    features = rows.select(
        "path",
        "label",
        "length",
        "modification_time",
        noisy.cast("array<float>").alias("features"),
        batches.MODEL_COLUMN,
        F.col("_key").alias(batches.BATCH),
        "_key",
    )
    raw = rows.select(
        "path",
        "label",
        "length",
        "modification_time",
        F.lit(batches.NEW).alias(batches.CHANGE),
        F.col("_key").alias(batches.BATCH),
        F.to_timestamp(F.lit("2026-11-15 00:00:00")).alias(batches.INGESTED_AT),
        "_key",
    )
    staging = out / "_staging"
    for name, frame in (("raw_images", raw), ("cnn_features", features)):
        frame.write.partitionBy("_key").parquet(str(staging / name))
        for part in sorted((staging / name).glob("_key=*")):
            _commit_dir(part, out / name, part.name.split("=", 1)[1])
    keys = sorted(p.name for p in (out / "raw_images").iterdir() if p.name.startswith(day))
    empty = pq.read_table(next((out / "quarantined_images").rglob("*.parquet"))).schema.empty_table()
    for k in keys:
        folder = staging / "quarantined_images" / k
        folder.mkdir(parents=True)
        pq.write_table(empty, folder / "part-00000.parquet")
        _commit_dir(folder, out / "quarantined_images", k)
    shutil.rmtree(staging)
    listing.unpersist()
    return {"synthetic_rows": total, "synthetic_batches": len(keys)}


def sensor_job(env: dict, cursor: Path, tick_only: bool = False) -> dict:
    """bench.sensor_job in its own process (its own Spark, as a daemon's run would have)."""
    cmd = [sys.executable, "-m", "bench.sensor_job", "--cursor-file", str(cursor)] + (
        ["--tick-only"] if tick_only else []
    )
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"sensor job failed:\n{(done.stdout + done.stderr)[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


QUIET_LOAD = 1.0  # the 1-min load average under which a timed batch starts (the machine is shared)
QUIET_WAIT_S = 45 * 60


def wait_until_quiet(below: float = QUIET_LOAD, most_s: float = QUIET_WAIT_S) -> list[float]:
    """Wait (up to `most_s`) for the 1-min load average to fall under `below`, so the timed batch runs on an
    otherwise idle machine; the load averages then (recorded with the point)."""
    deadline = time.monotonic() + most_s
    while os.getloadavg()[0] >= below and time.monotonic() < deadline:
        time.sleep(10)
    return [round(x, 2) for x in os.getloadavg()]


def one_scale(spark, n: int, reference: Path, weights: str, env: dict, batch: int) -> dict:
    """Grow the corpus to `n` photos, catch up, then time one batch of `batch` new photos (wall and CPU seconds)."""
    started = time.perf_counter()
    files = link_corpus(reference / "images", n)
    synthetic = synthesize_batches(spark, reference / "images", reference / "out", n)
    build_s = round(time.perf_counter() - started, 1)
    home = reference / "dagster_home"
    env = {
        **env,
        "FRUITS_IMAGE_ROOT": str(reference / "images"),
        "FRUITS_OUTPUT_URI": str(reference / "out"),
        "FRUITS_WEIGHTS": weights,
        "DAGSTER_HOME": str(home),
    }
    cursor = reference / "sensor_cursor.txt"
    logger.info("N=%d: %s built in %s s; catching up (sensor tick, main command)", files, synthetic, build_s)
    first_tick = sensor_job(env, cursor, tick_only=True)
    catch_up = main_command.run(env, home)
    added = add_photos(reference / "images", batch, prefix=f"batch{files}_")
    logger.info("N=%d: %d new photos; sensor tick + its run", files, added)
    loadavg = wait_until_quiet()
    timed = sensor_job(env, cursor)
    logger.info("N=%d: the main command with nothing new", files)
    nothing = main_command.run(env, home)
    return {
        "n": files,
        "build_s": build_s,
        **synthetic,
        "first_tick": first_tick,
        "catch_up_s": catch_up["seconds"],
        "added": added,
        "loadavg_before_batch": loadavg,
        "batch": timed,
        "batch_total_s": round(timed["tick_s"] + timed["job_s"], 2),
        "batch_cpu_s": timed["cpu_s"]["total"],
        "main_command_nothing_new": {
            k: nothing[k] for k in ("seconds", "steps_s", "cnn_images", "peak_rss_mib", "cpu_s")
        },
    }


def run_scale(
    ns: list[int], reference: Path, weights: str, env: dict, batch: int = 230, partial: Path | None = None
) -> dict:
    """Every N in turn, growing `reference` in place; the figures and ratios (also written to `partial` after
    each N, so a long run that is stopped keeps what it measured)."""
    from bench.common import session

    spark = session()
    results = []
    for n in sorted(ns):
        results.append(one_scale(spark, n, reference, weights, env, batch))
        logger.info("N=%d: %s", n, json.dumps({k: v for k, v in results[-1].items() if k != "batch"}))
        if partial is not None:
            partial.write_text(json.dumps(summary(results, reference), indent=2))
    spark.stop()
    return summary(results, reference)


def summary(results: list[dict], reference: Path) -> dict:
    """The figures of every N measured so far, and the growth ratios against the smallest."""
    first = results[0]

    def growth(value) -> dict:
        return {r["n"]: round(value(r) / value(first), 3) for r in results}

    wall = growth(lambda r: r["batch_total_s"])
    cpu = growth(lambda r: r["batch_cpu_s"])
    nothing_new = growth(lambda r: r["main_command_nothing_new"]["seconds"])
    largest = results[-1]
    peak = max(
        max(r["batch"]["peak_rss_mib"]["total"], r["main_command_nothing_new"]["peak_rss_mib"]["total"])
        for r in results
    )
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cores": os.cpu_count(),
        "batch_rows_per_synthetic_batch": BATCH_ROWS,
        "reference": str(reference),
        "results": results,
        "growth_vs_smallest": wall,
        "cpu_growth_vs_smallest": cpu,
        "nothing_new_growth_vs_smallest": nothing_new,
        "peak_rss_mib_max": peak,
        "targets_met": {
            "cpu_growth_1.2": max(cpu.values()) <= 1.2,
            "wall_growth_1.3": max(wall.values()) <= 1.3,
            "sensor_tick_10s_at_largest": largest["batch"]["tick_s"] <= 10.0,
            "nothing_new_growth_1.3": max(nothing_new.values()) <= 1.3,
            "peak_rss_4gib": peak <= 4096,
        },
    }


def report(result: dict) -> str:
    """The human-readable summary."""
    head = f"{'N':>9}{'load':>6}{'tick s':>8}{'run s':>8}{'total s':>9}{'x':>7}{'CPU s':>8}{'x':>7}{'main +0 s':>10}"
    lines = [head]
    for r in result["results"]:
        b, n = r["batch"], r["n"]
        lines.append(
            f"{n:>9}{r['loadavg_before_batch'][0]:>6}{b['tick_s']:>8}{b['job_s']:>8}{r['batch_total_s']:>9}"
            f"{result['growth_vs_smallest'][n]:>7}{r['batch_cpu_s']:>8}{result['cpu_growth_vs_smallest'][n]:>7}"
            f"{r['main_command_nothing_new']['seconds']:>10}"
        )
        lines.append(f"   steps: {b['steps_s']}")
    lines.append(f"peak RSS (MiB): {result['peak_rss_mib_max']}; targets met: {result['targets_met']}")
    return "\n".join(lines)
