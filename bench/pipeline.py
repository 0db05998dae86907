"""The pipeline side of the benchmark: materialize all assets through Dagster on local Spark, timed and metered."""

import argparse
import json
import time
from collections import defaultdict

from bench.memory import PeakRss


def step_seconds(instance, run_id: str) -> dict[str, float]:
    """Wall seconds of each step (asset or check) of a run, from its event log."""
    starts, ends = {}, defaultdict(float)
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None or event.step_key is None:
            continue
        if event.event_type_value == "STEP_START":
            starts[event.step_key] = entry.timestamp
        elif event.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE"):
            ends[event.step_key] = entry.timestamp
    return {key: round(ends[key] - starts[key], 2) for key in starts if key in ends}


def run(root: str, output: str, weights: str) -> dict:
    """Materialize every asset and check on `root`; return timings, counts and peak memory."""
    with PeakRss() as memory:
        started = time.perf_counter()
        from dagster import DagsterInstance

        from fruits_assets.cli.materialize import materialize_batch
        from fruits_assets.defs import FEATURE_ASSETS, FEATURE_CHECKS
        from fruits_assets.deploy.deployments import local_resources
        from spark_code.featurize.udf import process_totals

        instance = DagsterInstance.ephemeral()
        result = materialize_batch([*FEATURE_ASSETS, *FEATURE_CHECKS], local_resources(root, output, weights), instance)
        seconds = time.perf_counter() - started
    meta = {k: v.value for k, v in result.asset_materializations_for_node("cnn_features")[0].metadata.items()}
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    return {
        "success": result.success,
        "images": meta["featurized"],
        "quarantined": meta["quarantined"],
        "raw": meta["raw"],
        "seconds": round(seconds, 2),
        "images_per_s": round(meta["featurized"] / seconds, 2),
        "steps_s": step_seconds(instance, result.run_id),
        "counters": process_totals(),
        "udf_split_s": {k: meta[k] for k in ("decode_s", "inference_s") if k in meta},
        "checks_passed": checks,
        "peak_rss_mib": memory.peak_mib(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--weights", required=True)
    args = parser.parse_args()
    print(json.dumps(run(args.root, args.output, args.weights)))


if __name__ == "__main__":
    main()
