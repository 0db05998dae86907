"""One `new_images` sensor tick and the run it requests, as the daemon would do them, metered; JSON on stdout.

`python -m bench.sensor_job --cursor-file F [--tick-only]` (settings from the FRUITS_* env vars, DAGSTER_HOME).
"""

import argparse
import json
import time
from pathlib import Path

from bench.main_command import materializations
from bench.memory import PeakRss
from bench.pipeline import step_seconds


def tick(cursor_file: Path, instance) -> tuple[object, dict]:
    """Evaluate the sensor once with the stored cursor, store the next one; (result, figures)."""
    from dagster import build_sensor_context

    from fruits_assets.defs.automation import new_images
    from fruits_assets.deploy.deployments import local_resources

    cursor = cursor_file.read_text() if cursor_file.exists() else None
    context = build_sensor_context(
        cursor=cursor, instance=instance, resources={"image_source": local_resources()["image_source"]}
    )
    started = time.perf_counter()
    result = new_images(context)
    seconds = time.perf_counter() - started
    cursor = result.cursor if result.cursor is not None else context.cursor
    cursor_file.write_text(cursor or "")
    requests = result.run_requests or []
    return result, {
        "tick_s": round(seconds, 2),
        "cursor_bytes": len((cursor or "").encode()),
        "requested": {k: v for k, v in requests[0].tags.items()} if requests else {},
    }


def run_request(instance, request) -> dict:
    """Run the sensor's job for its batch, in this process, as the daemon's run worker would."""
    from fruits_assets.definitions import build_defs
    from fruits_assets.defs.partitions import ingest_batches

    instance.add_dynamic_partitions(ingest_batches.name, [request.partition_key])
    job = build_defs().resolve_job_def("materialize_all")
    started = time.perf_counter()
    result = job.execute_in_process(instance=instance, partition_key=request.partition_key, tags=request.tags)
    seconds = time.perf_counter() - started
    if not result.success:
        raise SystemExit("the sensor's run failed")
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    return {
        "job_s": round(seconds, 2),
        "steps_s": step_seconds(instance, result.run_id),
        "metadata": materializations(instance, result.run_id),
        "checks": checks,
    }


def main() -> None:
    """Tick (and run the request unless --tick-only); print one JSON line."""
    from dagster import DagsterInstance

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cursor-file", type=Path, required=True)
    parser.add_argument("--tick-only", action="store_true")
    args = parser.parse_args()
    with PeakRss(whole_process=True) as memory, DagsterInstance.get() as instance:
        result, figures = tick(args.cursor_file, instance)
        if result.run_requests and not args.tick_only:
            figures.update(run_request(instance, result.run_requests[0]))
    figures["peak_rss_mib"] = memory.peak_mib()
    figures["cpu_s"] = memory.cpu_seconds()
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
