"""`bench.run --incremental`: a full run, new photos (~1 %, or --new-photos N) and a second run, then nothing new and a
third (the fixed cost of a run)."""

import logging
import os
import time
from pathlib import Path

from bench import main_command
from bench.common import SHARED, link_tree, stratified, warm_cache

logger = logging.getLogger("bench")
NEW_PHOTOS = SHARED / "fruits-360" / "Training"


def add_new_photos(root: Path, count: int, prefix: str = "new_") -> int:
    """Link about `count` Training photos (exactly one if `count` is 1) into the root's class folders, spread over
    the classes (names prefixed `prefix`)."""
    selection = stratified(NEW_PHOTOS, max(1, count))
    if count <= 1:
        label = sorted(selection)[0]
        selection = {label: selection[label][:1]}
    added = 0
    for label, files in selection.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for path in files:
            (root / label / f"{prefix}{path.name}").symlink_to(path)
            added += 1
    warm_cache(selection)
    return added


def cnn_seconds(side: dict) -> float:
    """Seconds of the step that runs the CNN (0 when the batch had nothing new)."""
    return side["steps_s"].get("cnn_features", 0.0)


def run_incremental(
    selection: dict, tmp: Path, weights: str, env: dict, share: float = 0.01, new_photos: int | None = None
) -> dict:
    """The main command as a user runs it (all assets and checks) on the selection, then again with `new_photos`
    new photos (default: `share` of the corpus), then again with nothing new; all on the same output and Dagster
    instance."""
    root = link_tree(selection, tmp / "images")
    warm_cache(selection)
    env = {**env, "FRUITS_IMAGE_ROOT": str(root), "FRUITS_OUTPUT_URI": str(tmp / "out"), "FRUITS_WEIGHTS": weights}
    home = tmp / "dagster_home"
    logger.info("full run (main command) on %s", root)
    full = main_command.run(env, home)
    added = add_new_photos(root, round(share * full["raw"]) if new_photos is None else new_photos)
    logger.info("added %d new photos; main command again", added)
    incremental = main_command.run(env, home)
    logger.info("nothing new; main command again")
    nothing = main_command.run(env, home)
    fixed = nothing["seconds"]
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cores": os.cpu_count(),
        "command": "python -m fruits_assets (every asset and check)",
        "engine": env.get("FRUITS_ENGINE", "auto"),
        "added": added,
        "full": full,
        "incremental": incremental,
        "nothing_new": nothing,
        "fixed_startup_s": fixed,
        "run_ratio": round(incremental["seconds"] / full["seconds"], 4),
        "marginal_ratio": round((incremental["seconds"] - fixed) / full["seconds"], 4),
        "within_target": incremental["seconds"] <= 0.05 * full["seconds"] + fixed,
        "nothing_new_without_cnn": nothing["cnn_images"] == 0 and nothing["training_cnn_images"] == 0,
        "only_new_featurized": incremental["cnn_images"] == added and nothing["cnn_images"] == 0,
    }


def report(result: dict) -> str:
    """The human-readable summary."""
    full, inc, zero = result["full"], result["incremental"], result["nothing_new"]
    rows = [("full", full), (f"+{result['added']} photos", inc), ("+0 photos", zero)]
    return "\n".join(
        [
            f"machine: {result['cores']} cores; {result['command']}: {full['raw']} photos, "
            f"then +{result['added']}, then +0",
            f"{'':14}{'CNN images':>11}{'training CNN':>13}{'cnn step s':>12}{'whole run s':>13}",
            *(
                f"{name:14}{side['cnn_images']:>11}{side['training_cnn_images']:>13}{cnn_seconds(side):>12}"
                f"{side['seconds']:>13}"
                for name, side in rows
            ),
            f"+1 % run / full run: {result['run_ratio']:.3f}; (+1 % run - +0 run) / full run: "
            f"{result['marginal_ratio']:.3f} (target <= 0.05); within target: {result['within_target']}",
            f"+0 run: {zero['seconds']} s, no CNN image and no training photo featurized: "
            f"{result['nothing_new_without_cnn']}",
            f"+1 % run steps (s): {inc['steps_s']}",
            f"+0 run steps (s): {zero['steps_s']}",
            f"only the new photos met the CNN: {result['only_new_featurized']}",
        ]
    )
