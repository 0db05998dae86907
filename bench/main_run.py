"""`bench.run --main`: bare ONNX Runtime on Test + Training, then the main command from an empty output, with nothing
new, and with one new photo, in one invocation (ratios measured side by side); JSON out."""

import logging
import os
import time
from pathlib import Path

from bench import main_command
from bench.common import SHARED, link_tree, run_side, stratified, warm_cache
from bench.incremental import add_new_photos
from fruits_assets.deploy.settings import Settings

logger = logging.getLogger("bench")
TRAINING = SHARED / "fruits-360" / "Training"
CNN_STEPS = ("training_features", "cnn_features")
TARGETS = {"ratio_vs_bare_onnx": 2.0, "cnn_steps_ratio": 1.25, "zero_batch_s": 20.0, "one_photo_batch_s": 30.0}
STEP_TARGETS = {"fruit_classifier": 30.0, "pca_features": 25.0}


def bare_onnx(roots: list[Path], weights: str, env: dict) -> dict:
    """Bare ONNX Runtime (one process per root, both cores) on every photo of `roots`: seconds and images summed."""
    args = ["--weights", weights, "--engine", "onnx"]
    sides = [run_side("bench.baseline", ["--root", str(root), *args], env) for root in roots]
    seconds = sum(side["seconds"] for side in sides)
    images = sum(side["images"] for side in sides)
    return {"seconds": round(seconds, 2), "images": images, "images_per_s": round(images / seconds, 2), "sides": sides}


def nothing_new_run(env: dict, home: Path) -> dict:
    """The main command with nothing new: wall seconds, exit code, its terminal, whether it recorded a run."""
    before = main_command.last_run_id(home)
    done, seconds, memory = main_command.invoke(env, home)
    return {
        "seconds": round(seconds, 2),
        "returncode": done.returncode,
        "said_nothing_new": "nothing new in" in done.stdout + done.stderr,
        "recorded_a_run": main_command.last_run_id(home) != before,
        "terminal": (done.stdout + done.stderr)[-2000:],
        "peak_rss_mib": memory.peak_mib(),
    }


def run_main(tmp: Path, weights: str, env: dict, images: int | None = None) -> dict:
    """The whole benchmark in `tmp` (a link tree of Test, or of a stratified subset of about `images` photos, the
    output, the Dagster instance)."""
    load_start = os.getloadavg()
    selection = stratified(SHARED / "fruits-360" / "Test", images)
    root = link_tree(selection, tmp / "images")
    warm_cache(selection)
    warm_cache(stratified(TRAINING, None))
    logger.info("bare ONNX Runtime on Test and Training")
    bare = {**bare_onnx([root, TRAINING], weights, env), "loadavg": load_start}
    loads = {"start": load_start, "after_bare_onnx": os.getloadavg()}
    env = {
        **env,
        "FRUITS_IMAGE_ROOT": str(root),
        "FRUITS_TRAINING_ROOT": str(TRAINING),
        "FRUITS_OUTPUT_URI": str(tmp / "out"),
        "FRUITS_WEIGHTS": weights,
    }
    home = tmp / "dagster_home"
    logger.info("main command from an empty output")
    first = main_command.run(env, home)
    loads["after_first_run"] = os.getloadavg()
    logger.info("main command with nothing new")
    zero = nothing_new_run(env, home)
    added = add_new_photos(root, 1)
    logger.info("main command with %d new photo", added)
    one = main_command.run(env, home)
    result = summarise(bare, first, zero, one)
    result["settings"] = {"driver_memory": Settings.from_env(env).driver_memory}  # what the runs' Spark had
    loads["end"] = os.getloadavg()
    result["loadavg"] = {phase: [round(value, 2) for value in load] for phase, load in loads.items()}
    return result


def summarise(bare: dict, first: dict, zero: dict, one: dict) -> dict:
    """The JSON: figures, ratios and which targets are met."""
    cnn_steps = sum(first["steps_s"].get(step, 0.0) for step in CNN_STEPS)
    result = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cores": os.cpu_count(),
        "loadavg": {"start": list(bare.pop("loadavg", [])), "end": list(os.getloadavg())},
        "images": {"test": first["raw"], "training": first["training_cnn_images"]},
        "bare_onnx": bare,
        "first_run_s": first["seconds"],
        "ratio_vs_bare_onnx": round(first["seconds"] / bare["seconds"], 3),
        "cnn_steps_s": round(cnn_steps, 2),
        "cnn_steps_ratio": round(cnn_steps / bare["seconds"], 3),
        "steps_s": first["steps_s"],
        "zero_batch_s": zero["seconds"],
        "zero_batch": zero,
        "one_photo_batch_s": one["seconds"],
        "one_photo_steps_s": one["steps_s"],
        "one_photo_cnn_images": one["cnn_images"],
        "peak_rss_mib": max(first["peak_rss_mib"]["total"], one["peak_rss_mib"]["total"]),
        "peak_rss_by_run_mib": {"first": first["peak_rss_mib"], "one_photo": one["peak_rss_mib"]},
        "accuracy": first["metadata"].get("fruit_classifier", {}).get("accuracy"),
        "first_run_metadata": {k: first["metadata"].get(k) for k in ("fruit_classifier", "pca_features")},
    }
    met = {key: result[key] <= limit for key, limit in TARGETS.items()}
    met.update({f"{step}_s": result["steps_s"].get(step, 1e9) <= limit for step, limit in STEP_TARGETS.items()})
    met["peak_rss_4gib"] = result["peak_rss_mib"] <= 4096
    met["accuracy_0.97"] = (result["accuracy"] or 0) >= 0.97
    quiet = zero["returncode"] == 0 and zero["said_nothing_new"] and not zero["recorded_a_run"]
    met["nothing_new_runs_nothing"] = quiet
    result["targets_met"] = met
    return result


def report(result: dict) -> str:
    """The human-readable summary."""
    return "\n".join(
        [
            f"images {result['images']}; bare ONNX {result['bare_onnx']['seconds']} s; "
            f"first run {result['first_run_s']} s"
            f" ({result['ratio_vs_bare_onnx']}x); CNN steps {result['cnn_steps_s']} s ({result['cnn_steps_ratio']}x)",
            f"steps (s): {result['steps_s']}",
            f"nothing new: {result['zero_batch_s']} s; one photo: {result['one_photo_batch_s']} s; "
            f"peak RSS {result['peak_rss_mib']} MiB; accuracy {result['accuracy']}; load {result['loadavg']}",
            f"targets met: {result['targets_met']}",
        ]
    )
