"""`bench.run --main`: bare ONNX Runtime fp32 and the bare chosen engine on Test + Training, then the main command from
an empty output, with nothing new, and with one new photo, and last the main command forced to fp32 (its accuracy),
in one invocation (ratios measured side by side); JSON out."""

import logging
import os
import time
from pathlib import Path

from bench import main_command
from bench.common import SHARED, link_tree, run_side, stratified, warm_cache
from bench.incremental import add_new_photos
from fruits_assets.deploy.settings import Settings
from spark_code.featurize import hardware

logger = logging.getLogger("bench")
TRAINING = SHARED / "fruits-360" / "Training"
CNN_STEPS = ("training_features", "cnn_features")
TARGETS = {"ratio_vs_bare_fp32": 1.1, "zero_batch_s": 20.0, "one_photo_batch_s": 30.0}
CNN_SPEEDUP_TARGET = 1.35  # bare fp32 seconds / the pipeline's CNN steps seconds
FP32_ACCURACY_TOLERANCE = 0.003  # the chosen engine's accuracy within 0.3 points of fp32's
STEP_TARGETS = {"fruit_classifier": 30.0, "pca_features": 25.0}


def bare_engine(roots: list[Path], weights: str, env: dict, engine: str) -> dict:
    """A bare engine (one process per root, every core) on every photo of `roots`: seconds and images summed."""
    args = ["--weights", weights, "--engine", engine]
    sides = [run_side("bench.baseline", ["--root", str(root), *args], env) for root in roots]
    seconds = sum(side["seconds"] for side in sides)
    images = sum(side["images"] for side in sides)
    label = f"{sides[0]['engine']}-{sides[0]['precision']}"
    per_s = round(images / seconds, 2)
    return {"engine": label, "seconds": round(seconds, 2), "images": images, "images_per_s": per_s, "sides": sides}


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
    logger.info("bare ONNX Runtime fp32, then the bare chosen engine, on Test and Training")
    bare = {**bare_engine([root, TRAINING], weights, env, "onnx"), "loadavg": load_start}
    chosen = bare_engine([root, TRAINING], weights, env, "auto")
    loads = {"start": load_start, "after_bare_engines": os.getloadavg()}
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
    logger.info("main command forced to fp32 (FRUITS_ENGINE=onnx) from an empty output: its accuracy")
    fp32_env = {**env, "FRUITS_ENGINE": "onnx", "FRUITS_OUTPUT_URI": str(tmp / "out-fp32")}
    fp32 = main_command.run(fp32_env, tmp / "dagster_home_fp32")
    result = summarise(bare, chosen, first, zero, one, fp32)
    result["settings"] = {"driver_memory": Settings.from_env(env).driver_memory}  # what the runs' Spark had
    loads["end"] = os.getloadavg()
    result["loadavg"] = {phase: [round(value, 2) for value in load] for phase, load in loads.items()}
    return result


def _accuracy(run: dict) -> float | None:
    return run["metadata"].get("fruit_classifier", {}).get("accuracy")


def summarise(bare: dict, chosen: dict, first: dict, zero: dict, one: dict, fp32: dict) -> dict:
    """The JSON: figures, ratios and which targets are met (`bare`: ONNX Runtime fp32; `chosen`: the bare engine
    the pipeline chose; `fp32`: the main command forced to fp32)."""
    cnn_steps = sum(first["steps_s"].get(step, 0.0) for step in CNN_STEPS)
    engine = first["metadata"].get("cnn_features", {})
    result = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cores": os.cpu_count(),
        "cpu_bf16": list(hardware.native_bf16(hardware.this_cpu())),
        "loadavg": {"start": list(bare.pop("loadavg", [])), "end": list(os.getloadavg())},
        "images": {"test": first["raw"], "training": first["training_cnn_images"]},
        "engine": engine.get("engine"),
        "precision": engine.get("precision"),
        "bare_fp32": bare,
        "bare_engine": chosen,
        "bare_fp32_images_per_s": bare["images_per_s"],
        "bare_engine_images_per_s": chosen["images_per_s"],
        "first_run_s": first["seconds"],
        "ratio_vs_bare_fp32": round(first["seconds"] / bare["seconds"], 3),
        "ratio_vs_bare_engine": round(first["seconds"] / chosen["seconds"], 3),
        "cnn_steps_s": round(cnn_steps, 2),
        "cnn_speedup_vs_fp32": round(bare["seconds"] / cnn_steps, 3),
        "cnn_steps_ratio_vs_bare_engine": round(cnn_steps / chosen["seconds"], 3),
        "steps_s": first["steps_s"],
        "zero_batch_s": zero["seconds"],
        "zero_batch": zero,
        "one_photo_batch_s": one["seconds"],
        "one_photo_steps_s": one["steps_s"],
        "one_photo_cnn_images": one["cnn_images"],
        "peak_rss_mib": max(first["peak_rss_mib"]["total"], one["peak_rss_mib"]["total"]),
        "peak_rss_by_run_mib": {"first": first["peak_rss_mib"], "one_photo": one["peak_rss_mib"]},
        "accuracy": _accuracy(first),
        "accuracy_fp32": _accuracy(fp32),
        "first_run_fp32_s": fp32["seconds"],
        "first_run_fp32_steps_s": fp32["steps_s"],
        "first_run_metadata": {k: first["metadata"].get(k) for k in ("fruit_classifier", "pca_features")},
    }
    met = {key: result[key] <= limit for key, limit in TARGETS.items()}
    met["cnn_speedup_vs_fp32_1.35"] = result["cnn_speedup_vs_fp32"] >= CNN_SPEEDUP_TARGET
    gap = (result["accuracy_fp32"] or 0) - (result["accuracy"] or 0)
    met["accuracy_within_0.3_points_of_fp32"] = gap <= FP32_ACCURACY_TOLERANCE
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
            f"images {result['images']}; engine {result['engine']} {result['precision']}; bare fp32 "
            f"{result['bare_fp32']['seconds']} s, bare {result['bare_engine']['engine']} "
            f"{result['bare_engine']['seconds']} s; first run {result['first_run_s']} s "
            f"({result['ratio_vs_bare_fp32']}x bare fp32); CNN steps {result['cnn_steps_s']} s "
            f"({result['cnn_speedup_vs_fp32']}x faster than bare fp32)",
            f"steps (s): {result['steps_s']}",
            f"nothing new: {result['zero_batch_s']} s; one photo: {result['one_photo_batch_s']} s; "
            f"peak RSS {result['peak_rss_mib']} MiB; accuracy {result['accuracy']} (fp32 {result['accuracy_fp32']}, "
            f"fp32 first run {result['first_run_fp32_s']} s); load {result['loadavg']}",
            f"targets met: {result['targets_met']}",
        ]
    )
