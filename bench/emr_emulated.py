"""Benchmark: what a batch costs on the emulated EMR (EMR steps, wall time), against the same batch run locally.

`python -m bench.emr_emulated [--per-class 4] [--classes 3]` starts the emulator with a cold node (no pip cache, no
node venv, no ONNX model kept from earlier runs), runs the README's recipe on a few photos as a user runs it
(`FRUITS_DEPLOYMENT=emr python -m fruits_assets`): the first batch, a run with nothing new, a one-photo batch; then
the same photos locally (first run, then the same one-photo batch, timed). Writes bench/results/emr-emulated.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.conftest import FRUITS, TRAINING, WEIGHTS, first_images
from tests.emr_session import BUCKET, PREFIX, REPO, EmrShell

logger = logging.getLogger("bench")
RESULTS = Path(__file__).resolve().parent / "results"


def _photos(root: Path, classes: list[str], per_class: int) -> None:
    for folder, source, n in (("images", FRUITS, per_class), ("training", TRAINING, per_class + 2)):
        for cls in classes:
            (root / folder / cls).mkdir(parents=True)
            for path in first_images(source / cls, n):
                shutil.copy(path, root / folder / cls / path.name)


def _timed(command: list[str], env: dict[str, str]) -> tuple[float, str]:
    """(wall seconds, output) of a command of the README, which must succeed."""
    started = time.monotonic()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return wall, done.stdout + done.stderr


def _emr_batch(shell: EmrShell, cluster: str) -> dict:
    """The main command on the cluster: its wall time and the EMR steps it submitted (each with its own time)."""
    emr = shell.client("emr")
    before = {s["Id"] for s in emr.list_steps(ClusterId=cluster)["Steps"]}
    wall, output = _timed([sys.executable, "-m", "fruits_assets"], shell.env | {"FRUITS_DEPLOYMENT": "emr"})
    steps = [s for s in emr.list_steps(ClusterId=cluster)["Steps"] if s["Id"] not in before]
    rows = []
    for step in reversed(steps):  # ListSteps: newest first
        timeline = step["Status"]["Timeline"]
        rows.append(
            {
                "name": step["Name"],
                "state": step["Status"]["State"],
                "emr_step_s": round((timeline["EndDateTime"] - timeline["StartDateTime"]).total_seconds(), 2),
                **shell.step_containers(step["Id"]),  # its YARN containers (AM + executors), their peak memory
            }
        )
    logger.info("emr batch: %.1f s, %d EMR step(s); %s", wall, len(rows), output.strip().splitlines()[-1:])
    result = {"emr_steps": len(rows), "wall_s": round(wall, 1), "steps": rows}
    if rows:  # the Dagster steps the EMR steps ran, and their own work (the rest of an EMR step is fixed cost)
        work = _dagster_work(shell)
        fixed = sum(row["emr_step_s"] for row in rows) - work["dagster_work_s"]
        result |= work | {"fixed_per_emr_step_s": round(fixed / len(rows), 1)}
    return result


def _dagster_work(shell: EmrShell) -> dict:
    """The newest run's Dagster steps that ran on the cluster (STEP_START to STEP_SUCCESS, as relayed) and their
    summed duration."""
    from dagster import DagsterEventType

    instance = shell.instance()
    run = instance.get_runs(limit=1)[0]
    starts, durations = {}, {}
    for event in instance.all_logs(run.run_id):
        kind = event.dagster_event_type
        if kind == DagsterEventType.STEP_START:
            starts[event.step_key] = event.timestamp
        elif kind == DagsterEventType.STEP_SUCCESS and event.step_key in starts:
            durations[event.step_key] = event.timestamp - starts[event.step_key]
    launched = [e.user_message for e in instance.all_logs(run.run_id) if "Dagster step(s): " in e.user_message]
    remote = {key for line in launched for key in line.split("Dagster step(s): ", 1)[1].split(", ")}
    return {
        "dagster_steps": len(remote),
        "dagster_work_s": round(sum(durations.get(k, 0.0) for k in remote), 1),
    }


def _mib(folder: Path) -> float:
    """The bytes under `folder` (du -sb), in MiB."""
    done = subprocess.run(["du", "-sb", str(folder)], capture_output=True, text=True, check=True)
    return int(done.stdout.split()[0]) / 2**20


def _node_install(shell: EmrShell, cluster: str, work: Path) -> dict:
    """What the bootstrap installed into the node's Python: the node venv's MiB less those of an empty venv of the
    same interpreter (EMR's python3.11 before the bootstrap), and its packages (node.json)."""
    from tests.emr_emulator.host import base_python

    venv = shell.node_python().parent.parent
    subprocess.run([base_python(), "-m", "venv", str(work / "empty-venv")], check=True)
    key = f"{PREFIX}/staging/bootstrap/clusters/{cluster}/node.json"
    node = json.loads(shell.client("s3").get_object(Bucket=BUCKET, Key=key)["Body"].read())
    packages = sorted(node["packages"])
    return {
        "node_venv_mib": round(_mib(venv), 1),
        "node_install_mib": round(_mib(venv) - _mib(work / "empty-venv"), 1),
        "node_has_tensorflow": any(p.startswith(("tensorflow", "keras", "tf2onnx")) for p in packages),
    }


def _local_one_photo(work: Path, new: Path, cls: str) -> dict:
    """The same photos run locally with the main command (first run, then the same one new photo, timed)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FRUITS_", "AWS_", "DAGSTER_"))}
    (work / "local-home").mkdir()
    env |= {
        "DAGSTER_HOME": str(work / "local-home"),
        "FRUITS_IMAGE_ROOT": str(work / "photos" / "images"),
        "FRUITS_TRAINING_ROOT": str(work / "photos" / "training"),
        "FRUITS_OUTPUT_URI": str(work / "local-out"),
        "FRUITS_WEIGHTS": str(WEIGHTS),
    }
    first, _ = _timed([sys.executable, "-m", "fruits_assets"], env)
    shutil.copy(new, work / "photos" / "images" / cls / new.name)
    one, _ = _timed([sys.executable, "-m", "fruits_assets"], env)
    logger.info("local: first run %.1f s, one photo %.1f s", first, one)
    return {"local_first_batch_s": round(first, 1), "local_one_photo_s": round(one, 1)}


def main() -> None:
    """Run the recipe on the emulator, then locally, and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--per-class", type=int, default=4)
    parser.add_argument("--json", type=Path, default=RESULTS / "emr-emulated.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    work = Path(tempfile.mkdtemp(prefix="bench-emr-"))
    classes = sorted(p.name for p in FRUITS.iterdir() if p.is_dir())[: args.classes]
    _photos(work / "photos", classes, args.per_class)
    new = first_images(FRUITS / classes[0], args.per_class + 1)[-1]
    shell = EmrShell.start(work / "emr", cold=True, master="yarn")
    try:
        shell.aws("s3", "mb", f"s3://{BUCKET}", "--region", "eu-west-3")
        for folder in ("images", "training"):
            shell.aws("s3", "sync", str(work / "photos" / folder), f"s3://{BUCKET}/{PREFIX}/{folder}/", "--quiet")
        shell.python("bootstrap/emr_cluster.py", "roles")
        shell.python("bootstrap/emr_cluster.py", "upload", "--weights", str(WEIGHTS))
        started = time.monotonic()
        cluster = shell.python("bootstrap/emr_cluster.py", "create", "--wait").stdout.strip().splitlines()[-1]
        bootstrap_s = time.monotonic() - started
        shell.env["FRUITS_EMR_CLUSTER_ID"] = cluster
        logger.info("cluster %s ready in %.1f s (cold bootstrap)", cluster, bootstrap_s)
        install = _node_install(shell, cluster, work)
        first = _emr_batch(shell, cluster)
        nothing = _emr_batch(shell, cluster)
        shell.aws("s3", "cp", str(new), f"s3://{BUCKET}/{PREFIX}/images/{classes[0]}/{new.name}", "--quiet")
        one = _emr_batch(shell, cluster)
    finally:
        shell.stop()
    local = _local_one_photo(work, new, classes[0])
    result = {
        "what": "the README's EMR recipe on the emulated EMR (tests/emr_emulator, cold node): moto + a local node, "
        "spark-submit --master yarn --deploy-mode client on Hadoop's YARN (2 NodeManagers, physical memory "
        "enforced, the recipe's executor memory scaled by 1/2), S3A to moto on loopback; each batch is "
        "`FRUITS_DEPLOYMENT=emr python -m fruits_assets` as a user runs it; local_* the same photos and batch with "
        "the local main command",
        "photos": {
            "classes": len(classes),
            "images": len(classes) * args.per_class,
            "training": len(classes) * (args.per_class + 2),
        },
        "master": "yarn",
        "poll_seconds": float(shell.env.get("FRUITS_EMR_POLL_SECONDS", 15)),
        "bootstrap_s": round(bootstrap_s, 1),
        **install,
        "first_batch": first,
        "nothing_new": nothing,
        "one_photo": one,
        **local,
        "one_photo_vs_local": round(one["wall_s"] / local["local_one_photo_s"], 2),
        "load_average_after": os.getloadavg()[0],
    }
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    logger.info("wrote %s: %s", args.json, {k: v for k, v in result.items() if not isinstance(v, dict)})


if __name__ == "__main__":
    main()
