"""`bench.run --scale N ...`: the cost of one real batch of new photos on a simulated corpus of N photos.

The corpus grows in place from a reference (the --workdir of `bench.run --incremental`: a real main-command output on
the Test photos), N after N, because tables name images by absolute path. For each N: hard links of the reference's
photos under new names bring the root to N files; their batches are synthetic but in the real table layout (raw
rows from the real listing code, feature rows = the source photo's real features plus a little noise, empty
quarantine), each a commit to the real Delta tables. An untimed catch-up (a sensor tick, then the main command) lets
the real code derive what it derives (the scaled and PCA tables take the features' changes, the classifier's
evaluation). Then BATCH new photos arrive and are timed: the sensor's tick
and the run it requests (every asset and check); then the README's main command with nothing new (it lists the
root itself). The new photos stay: the next N includes them.
"""

import json
import logging
import os
import re
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from bench import main_command
from bench.common import REPO, stratified

logger = logging.getLogger("bench")
BATCH_ROWS = 4_800  # rows per synthetic batch: over 200 batches (commits to each table) before the timed one at 1 M
T_SYNTH = datetime(2026, 11, 15, tzinfo=timezone.utc)
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


def _append(uri: str, rows, recorded: dict, taken: tuple[str, int] | None = None) -> int:
    """Append Arrow `rows` to the Delta table at `uri` as one commit, as a batch of the pipeline commits it (what it
    records, the source version it takes); the table's new version."""
    import json

    from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake

    schema = pa.schema(DeltaTable(uri).schema().to_arrow())
    transactions = [Transaction(taken[0], taken[1])] if taken else None
    properties = CommitProperties(custom_metadata={"userMetadata": json.dumps(recorded)}, app_transactions=transactions)
    write_deltalake(uri, rows.select(schema.names).cast(schema), mode="append", commit_properties=properties)
    return DeltaTable(uri).version()


def synthesize_batches(spark, images: Path, out: Path, n: int) -> dict:
    """Batches for the hard-linked photos the raw table does not hold yet, committed to the real Delta tables as the
    pipeline commits them: one raw commit and one feature commit (taking that raw version) per batch of BATCH_ROWS
    rows; the quarantine takes the last raw version with an empty commit."""
    import numpy as np
    from pyspark.sql import functions as F

    from spark_code.ingest import batches
    from spark_code.ingest.images import list_frame
    from spark_code.storage import lake, tables

    listing = list_frame(spark, str(images)).frame.filter(F.col("path").contains(f"/{SIM_PREFIX}"))
    frame = listing.toPandas()
    if frame.empty:
        return {"synthetic_rows": 0, "synthetic_batches": 0}
    known = lake.read(str(out / "raw_images"), ["path"]).column("path")
    rows = pa.Table.from_pandas(frame, preserve_index=False)
    rows = rows.filter(pc.invert(pc.is_in(rows.column("path"), value_set=known)))
    if rows.num_rows == 0:
        return {"synthetic_rows": 0, "synthetic_batches": 0}
    real = lake.read(str(out / "cnn_features"), ["path", "features", batches.MODEL_COLUMN])
    real = real.filter(pc.invert(pc.match_substring(real.column("path"), f"/{SIM_PREFIX}")))
    index = {path: i for i, path in enumerate(real.column("path").to_pylist())}
    vectors = np.stack(real.column("features").to_numpy(zero_copy_only=False)).astype(np.float32)
    model = real.column(batches.MODEL_COLUMN)[0].as_py()
    day = f"2026111{len(str(n))}"  # keys sort before real batches; a new prefix per order of magnitude of N
    rows = rows.sort_by("path")
    groups = -(-rows.num_rows // BATCH_ROWS)
    rng, version = np.random.default_rng(n), None
    for g in range(groups):
        part = rows.slice(g * BATCH_ROWS, BATCH_ROWS)
        key = f"{day}T000000.{g:03d}Z" if g < 1000 else f"{day}T0000{g // 1000:02d}.{g % 1000:03d}Z"
        count = part.num_rows
        raw = part.append_column(batches.CHANGE, pa.array([batches.NEW] * count))
        raw = raw.append_column(batches.BATCH, pa.array([key] * count))
        raw = raw.append_column(batches.INGESTED_AT, pa.array([T_SYNTH] * count, pa.timestamp("us", tz="UTC")))
        version = _append(str(out / "raw_images"), raw, {"batch": key})
        sources = [re.sub(f"/{SIM_PREFIX}[0-9]+_", "/", p) for p in part.column("path").to_pylist()]
        noise = rng.integers(-500, 501, size=(count, vectors.shape[1])).astype(np.float32) / 25000
        features = np.maximum(vectors[[index[s] for s in sources]] + noise, 0.0)
        feature_rows = part.append_column("features", pa.array(list(features), pa.list_(pa.float32())))
        feature_rows = feature_rows.append_column(batches.MODEL_COLUMN, pa.array([model] * count))
        feature_rows = feature_rows.append_column(batches.BATCH, pa.array([key] * count))
        _append(str(out / "cnn_features"), feature_rows, {"batch": key}, ("raw_images", version))
    quarantine = str(out / "quarantined_images")
    empty = tables.read(spark, quarantine).limit(0)
    tables.commit(quarantine, tables.Update(empty, source=("raw_images", version), recorded={"batch": key}))
    return {"synthetic_rows": rows.num_rows, "synthetic_batches": groups}


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
