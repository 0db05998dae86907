"""The README's main command (`python -m fruits_assets`) run as a user runs it, metered: time, steps, counts, RSS."""

import subprocess
import sys
import time
from pathlib import Path

from bench.common import REPO
from bench.memory import PeakRss
from bench.pipeline import step_seconds


def materializations(instance, run_id: str) -> dict[str, dict]:
    """Each asset's materialization metadata in a run, as plain values."""
    found = {}
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is not None and event.event_type_value == "ASSET_MATERIALIZATION":
            materialization = event.event_specific_data.materialization
            values = {k: getattr(v, "value", v) for k, v in materialization.metadata.items()}
            found[materialization.asset_key.to_user_string()] = {
                k: v for k, v in values.items() if isinstance(v, int | float | str | bool)
            }
    return found


def invoke(env: dict, home: Path) -> tuple[subprocess.CompletedProcess, float, PeakRss]:
    """The main command in its own process with DAGSTER_HOME=`home`: (its completed process, wall seconds, the
    process tree's peak RSS and CPU)."""
    with PeakRss() as memory:
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "fruits_assets"],
            cwd=REPO,
            env={**env, "DAGSTER_HOME": str(home)},
            capture_output=True,
            text=True,
            check=False,
        )
        seconds = time.perf_counter() - started
    return done, seconds, memory


def last_run_id(home: Path) -> str | None:
    """The id of the newest run the Dagster instance in `home` holds (None if none, or no instance yet)."""
    from dagster import DagsterInstance
    from dagster._core.instance.ref import InstanceRef

    if not (home / "history").exists() and not (home / "storage").exists():
        return None
    with DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as instance:
        records = instance.get_run_records(limit=1)
        return records[0].dagster_run.run_id if records else None


def run(env: dict, home: Path) -> dict:
    """Run the main command with DAGSTER_HOME=`home`; return its wall seconds, step seconds, counts and peak RSS."""
    from dagster import DagsterInstance
    from dagster._core.instance.ref import InstanceRef

    home.mkdir(parents=True, exist_ok=True)
    before = last_run_id(home)
    done, seconds, memory = invoke(env, home)
    if done.returncode != 0:
        raise SystemExit(f"main command failed ({done.returncode}):\n{(done.stdout + done.stderr)[-4000:]}")
    steps, meta = {}, {}  # nothing new: no run recorded, no step, nothing materialized
    with DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as instance:
        records = instance.get_run_records(limit=1)
        if records and records[0].dagster_run.run_id != before:
            steps = step_seconds(instance, records[0].dagster_run.run_id)
            meta = materializations(instance, records[0].dagster_run.run_id)
    cnn = meta.get("cnn_features", {})
    training = meta.get("training_features", {})
    return {
        "seconds": round(seconds, 2),
        "steps_s": steps,
        "raw": cnn.get("raw", 0),
        "cnn_images": cnn.get("cnn_images", 0),
        "training_cnn_images": training.get("cnn_images", training.get("featurized", 0)),
        "materialized": sorted(meta),
        "metadata": meta,
        "terminal": done.stdout[-3000:],
        "peak_rss_mib": memory.peak_mib(),
        "cpu_s": memory.cpu_seconds(),
        "recorded_a_run": bool(steps),
    }
