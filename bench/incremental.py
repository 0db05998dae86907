"""`bench.run --incremental`: a full run, ~1 % new photos and a second run, then 1 photo and a third (fixed cost)."""

import logging
import os
import time
from pathlib import Path

from bench.run import SHARED, link_tree, run_side, stratified, warm_cache

logger = logging.getLogger("bench")
NEW_PHOTOS = SHARED / "fruits-360" / "Training"


def add_new_photos(root: Path, share: float, total: int, prefix: str = "new_") -> int:
    """Link about `share` × `total` Training photos into the root's class folders (names prefixed `prefix`)."""
    selection = stratified(NEW_PHOTOS, max(1, round(share * total)))
    if share * total < 1:
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
    """Seconds of the step that runs the CNN."""
    return side["steps_s"]["cnn_features"]


def run_incremental(selection: dict, tmp: Path, weights: str, env: dict, share: float = 0.01) -> dict:
    """Full run on the selection, add `share` new photos, run again on the same output; both sides' figures."""
    root = link_tree(selection, tmp / "images")
    warm_cache(selection)
    common = ["--root", str(root), "--weights", weights, "--output", str(tmp / "out")]
    logger.info("full run on %s", root)
    full = run_side("bench.pipeline", common, env)
    added = add_new_photos(root, share, full["raw"])
    logger.info("added %d new photos; incremental run", added)
    started = time.perf_counter()
    incremental = run_side("bench.pipeline", common, env)
    incremental_wall = time.perf_counter() - started
    add_new_photos(root, 0.0, full["raw"], prefix="one_")
    logger.info("added 1 photo; run again to measure the fixed start-up of a batch")
    one = run_side("bench.pipeline", common, env)
    fixed = cnn_seconds(one)
    marginal = cnn_seconds(incremental) - fixed
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cores": os.cpu_count(),
        "added": added,
        "full": full,
        "incremental": incremental,
        "incremental_wall_s": round(incremental_wall, 2),
        "one_photo": one,
        "fixed_startup_s": fixed,
        "cnn_ratio": round(cnn_seconds(incremental) / cnn_seconds(full), 4),
        "marginal_ratio": round(marginal / cnn_seconds(full), 4),
        "within_target": cnn_seconds(incremental) <= 0.05 * cnn_seconds(full) + fixed,
        "only_new_featurized": incremental["counters"]["cnn_images"] == added and one["counters"]["cnn_images"] == 1,
    }


def report(result: dict) -> str:
    """The human-readable summary."""
    full, inc, one = result["full"], result["incremental"], result["one_photo"]
    return "\n".join(
        [
            f"machine: {result['cores']} cores; full run {full['raw']} photos, then +{result['added']} new photos",
            f"{'':12}{'CNN images':>11}{'cnn step s':>12}{'whole run s':>13}",
            f"{'full':12}{full['counters']['cnn_images']:>11}{cnn_seconds(full):>12}{full['seconds']:>13}",
            f"{'incremental':12}{inc['counters']['cnn_images']:>11}{cnn_seconds(inc):>12}{inc['seconds']:>13}",
            f"{'one photo':12}{one['counters']['cnn_images']:>11}{cnn_seconds(one):>12}{one['seconds']:>13}",
            f"incremental / full CNN step: {result['cnn_ratio']:.3f}",
            f"fixed start-up of a batch (the one-photo batch's CNN step): {result['fixed_startup_s']} s",
            f"(incremental - fixed) / full CNN step: {result['marginal_ratio']:.3f} (target <= 0.05); "
            f"within target: {result['within_target']}",
            f"incremental steps (s): {inc['steps_s']}",
            f"only the new photos met the CNN: {result['only_new_featurized']}",
        ]
    )
