"""Benchmark: where an EMR step's time goes, on the emulated EMR: the launcher's fixed cost against the step's work.

`python -m bench.emr_emulated [--per-class 4] [--classes 3]` starts the emulator, runs the README's recipe on a few
photos (first batch: every asset; then a one-photo batch), and writes bench/results/emr-emulated.json: per step,
staging (code zip, step pickle, main file to S3), submission, the EMR step's own life (spark-submit to exit) and the
Dagster step inside it (the asset's work), so fixed cost = launcher time - Dagster step time.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from tests.conftest import FRUITS, TRAINING, WEIGHTS, first_images
from tests.emr_session import BUCKET, PREFIX, EmrShell

logger = logging.getLogger("bench")
RESULTS = Path(__file__).resolve().parent / "results"


def _photos(root: Path, classes: list[str], per_class: int) -> None:
    for folder, source, n in (("images", FRUITS, per_class), ("training", TRAINING, per_class + 2)):
        for cls in classes:
            (root / folder / cls).mkdir(parents=True)
            for path in first_images(source / cls, n):
                shutil.copy(path, root / folder / cls / path.name)


def _steps(shell: EmrShell, instance, result, timings) -> list[dict]:
    """One row per launched step: the launcher's times, EMR's Start/End of the step, the Dagster step's duration."""
    import boto3
    from dagster import DagsterEventType

    emr = boto3.client("emr", region_name="eu-west-3")
    durations = {
        e.step_key: e.dagster_event.event_specific_data.duration_ms / 1000
        for e in instance.all_logs(result.run_id, of_type=DagsterEventType.STEP_SUCCESS)
    }
    rows = []
    for timing in timings:
        timeline = emr.describe_step(ClusterId=shell.env["FRUITS_EMR_CLUSTER_ID"], StepId=timing.emr_step_id)
        timeline = timeline["Step"]["Status"]["Timeline"]
        launcher_s = timing.staged_s + timing.submit_s + timing.waited_s
        work_s = durations.get(timing.step_key, 0.0)
        rows.append(
            {
                "step": timing.step_key,
                "staged_s": round(timing.staged_s, 2),
                "submit_s": round(timing.submit_s, 2),
                "waited_s": round(timing.waited_s, 2),
                "emr_step_s": round((timeline["EndDateTime"] - timeline["StartDateTime"]).total_seconds(), 2),
                "dagster_step_s": round(work_s, 2),
                "fixed_s": round(launcher_s - work_s, 2),
            }
        )
    return rows


def _batch(shell: EmrShell, key: str) -> dict:
    """One main-command batch through emr_run in this process; its per-step breakdown and totals."""
    from fruits_assets.deploy.emr import job, launcher
    from tests.emr_session import REPO

    os.environ.update(shell.env | {"FRUITS_DEPLOYMENT": "emr"})
    os.chdir(REPO)
    from dagster import DagsterInstance

    instance = DagsterInstance.from_config(str(shell.home))
    instance.add_dynamic_partitions("ingest_batches", [key])
    launcher.TIMINGS.clear()
    started = time.monotonic()
    result = job.launch(instance, key, with_console=False)
    wall = time.monotonic() - started
    steps = _steps(shell, instance, result, list(launcher.TIMINGS))
    fixed, work = sum(s["fixed_s"] for s in steps), sum(s["dagster_step_s"] for s in steps)
    return {
        "success": result.success,
        "wall_s": round(wall, 1),
        "emr_steps": len(steps),
        "fixed_s": round(fixed, 1),
        "work_s": round(work, 1),
        "fixed_per_step_s": round(fixed / max(1, len(steps)), 1),
        "steps": steps,
    }


def main() -> None:
    """Run the recipe on the emulator and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--per-class", type=int, default=4)
    parser.add_argument("--json", type=Path, default=RESULTS / "emr-emulated.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    work = Path(tempfile.mkdtemp(prefix="bench-emr-"))
    classes = sorted(p.name for p in FRUITS.iterdir() if p.is_dir())[: args.classes]
    _photos(work / "photos", classes, args.per_class)
    shell = EmrShell.start(work / "emr")
    try:
        shell.aws("s3", "mb", f"s3://{BUCKET}", "--region", "eu-west-3")
        for folder in ("images", "training"):
            shell.aws("s3", "sync", str(work / "photos" / folder), f"s3://{BUCKET}/{PREFIX}/{folder}/", "--quiet")
        shell.python("bootstrap/emr_cluster.py", "upload", "--weights", str(WEIGHTS))
        started = time.monotonic()
        cluster = shell.python("bootstrap/emr_cluster.py", "create", "--wait").stdout.strip().splitlines()[-1]
        shell.env["FRUITS_EMR_CLUSTER_ID"] = cluster
        create_s = time.monotonic() - started
        logger.info("cluster %s ready in %.1f s", cluster, create_s)
        first = _batch(shell, "20260101T000000.000Z")
        new = first_images(FRUITS / classes[0], args.per_class + 1)[-1]
        shell.aws("s3", "cp", str(new), f"s3://{BUCKET}/{PREFIX}/images/{classes[0]}/{new.name}", "--quiet")
        one = _batch(shell, "20260101T000100.000Z")
    finally:
        shell.stop()
    result = {
        "what": "the README's EMR recipe on the emulated EMR (tests/emr_emulator): moto + a local node, "
        "spark-submit --master local[2], S3A to moto on loopback",
        "photos": {
            "classes": len(classes),
            "images": len(classes) * args.per_class,
            "training": len(classes) * (args.per_class + 2),
        },
        "poll_seconds": float(shell.env.get("FRUITS_EMR_POLL_SECONDS", 15)),
        "create_wait_s": round(create_s, 1),
        "first_batch": first,
        "one_photo_batch": one,
        "load_average_after": os.getloadavg()[0],
    }
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    logger.info(
        "wrote %s: first batch %.0f s (%d steps, fixed %.0f s, work %.0f s); one photo %.0f s",
        args.json,
        first["wall_s"],
        first["emr_steps"],
        first["fixed_s"],
        first["work_s"],
        one["wall_s"],
    )


if __name__ == "__main__":
    main()
