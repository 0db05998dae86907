"""Benchmark: the bare model vs the whole asset graph on the same images, in one invocation; JSON out."""

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

from bench.common import DEFAULT_ROOT, DEFAULT_WEIGHTS, REPO, link_tree, run_side, stratified, warm_cache, write_json
from fruits_assets.deploy.settings import Settings
from spark_code.featurize.cnn import ENGINES

logger = logging.getLogger("bench")


def report(result: dict) -> str:
    """The human-readable summary."""
    sides = [("bare TF", result["baseline"]), ("bare ONNX", result["baseline_onnx"]), ("pipeline", result["pipeline"])]
    pipe = result["pipeline"]
    lines = [
        f"machine: {result['cores']} cores; images: {pipe['images']} (+{pipe['quarantined']} quarantined); "
        f"pipeline engine: {result['engine']}",
        f"{'':10}{'images':>8}{'seconds':>10}{'images/s':>10}{'peak RSS MiB':>14}",
        *(
            f"{name:10}{side['images']:>8}{side['seconds']:>10}{side['images_per_s']:>10}"
            f"{side['peak_rss_mib']['total']:>14}"
            for name, side in sides
        ),
        f"pipeline throughput / bare TF: {result['speedup_vs_tensorflow']:.2f}x (target >= 3)",
        f"pipeline time / bare ONNX: {result['ratio_vs_onnx']:.2f} (target <= 1.3)",
        f"ONNX conversion (cold cache, once per weights and size): {result['onnx_conversion_s']} s",
        f"pipeline peak RSS by process (MiB): {pipe['peak_rss_mib']} (target total <= 4096)",
        f"pipeline steps (s): {pipe['steps_s']}",
        f"CNN images {pipe['counters']['cnn_images']} = featurized {pipe['images']}: {result['one_pass_per_image']}",
    ]
    for name, side in sides[:2]:
        lines.append(
            f"{name} split (s): load {side['startup_and_model_load_s']}, decode {side['read_decode_preprocess_s']}, "
            f"inference {side['inference_s']}"
        )
    return "\n".join(lines)


def convert_once(weights: str, image_size: int, cache: str) -> float:
    """Convert the Keras model to ONNX into `cache` (cold); return the seconds it took."""
    from spark_code.featurize.cnn import CnnEngine, CnnSpec, model_payload

    started = time.perf_counter()
    model_payload(CnnEngine("onnx", CnnSpec(input_size=image_size), onnx_cache=cache), weights)
    return round(time.perf_counter() - started, 2)


def main_incremental(args, selection: dict, env: dict) -> None:
    """The --incremental mode (see bench/incremental.py)."""
    from bench import incremental

    if args.workdir:  # kept afterwards: e.g. `python -m bench.openset --features-from <workdir>/out`
        args.workdir.mkdir(parents=True, exist_ok=False)
        result = incremental.run_incremental(selection, args.workdir, args.weights, env, new_photos=args.new_photos)
    else:
        with tempfile.TemporaryDirectory(prefix="fruits-bench-") as tmp:
            result = incremental.run_incremental(selection, Path(tmp), args.weights, env, new_photos=args.new_photos)
    out = write_json(result, args.json, "incremental")
    print(incremental.report(result))
    print(f"JSON: {out}")
    if not result["only_new_featurized"]:
        raise SystemExit("benchmark invariant failed: the CNN ran on more than the new photos")


def main_main(args, env: dict) -> None:
    """The --main mode (see bench/main_run.py)."""
    from bench import main_run

    if args.workdir is not None:  # kept: e.g. for `python -m bench.openset --features-from WORKDIR/out`
        result = main_run.run_main(args.workdir, args.weights, env, args.images)
    else:
        with tempfile.TemporaryDirectory(prefix="fruits-bench-") as tmp:
            result = main_run.run_main(Path(tmp), args.weights, env, args.images)
    default = REPO / "bench" / "results" / ("main-command.json" if args.images is None else "main-command-subset.json")
    out = write_json(result, args.json or default, "main-command")
    print(main_run.report(result))
    print(f"JSON: {out}")


def main_scale(args, env: dict) -> None:
    """The --scale mode (see bench/scale.py)."""
    from bench import scale

    if not (args.reference / "out").is_dir() or not (args.reference / "images").is_dir():
        raise SystemExit(
            f"--reference {args.reference}: needs images/ and out/ of a full main-command run, e.g. the --workdir "
            "of `python -m bench.run --incremental --workdir DIR`"
        )
    partial = args.json or REPO / "bench" / "results" / "scale-partial.json"
    result = scale.run_scale(args.scale, args.reference, args.weights, env, partial=partial)
    out = write_json(result, args.json, "scale")
    print(scale.report(result))
    print(f"JSON: {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--images", type=int, default=None, help="stratified subset of about N images")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--weights", default=Settings.from_env().weights or str(DEFAULT_WEIGHTS))
    parser.add_argument("--json", type=Path, default=None, help="where to write the JSON (default bench/results/)")
    parser.add_argument("--incremental", action="store_true", help="full run, add ~1%% new photos, run again")
    parser.add_argument(
        "--main", action="store_true", help="bare ONNX, then the main command: full, nothing new, one new photo"
    )
    parser.add_argument(
        "--new-photos", type=int, default=None, help="--incremental: how many new photos (default: 1%% of the corpus)"
    )
    parser.add_argument("--engine", choices=ENGINES, default=None, help="the pipeline's CNN engine")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="--incremental, --main: a new folder to keep the outputs in"
    )
    parser.add_argument("--scale", type=int, nargs="+", default=None, help="corpus sizes N: time one batch at each")
    parser.add_argument(
        "--reference", type=Path, default=None, help="--scale: the --workdir of an --incremental run (grown in place)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    selection = stratified(args.root, args.images)
    env = {**os.environ, "FRUITS_BATCH_SIZE": str(args.batch_size), "FRUITS_IMAGE_SIZE": str(args.image_size)}
    if args.engine:
        env["FRUITS_ENGINE"] = args.engine
    if args.main:
        main_main(args, env)
        return
    if args.incremental:
        main_incremental(args, selection, env)
        return
    if args.scale:
        main_scale(args, env)
        return
    with tempfile.TemporaryDirectory(prefix="fruits-bench-") as tmp:
        root = link_tree(selection, Path(tmp) / "images") if args.images else args.root
        warm_cache(selection)
        env["FRUITS_ONNX_CACHE"] = str(Path(tmp) / "onnx")
        conversion_s = convert_once(args.weights, args.image_size, env["FRUITS_ONNX_CACHE"])
        common = ["--root", str(root), "--weights", args.weights]
        sizes = ["--batch-size", str(args.batch_size), "--image-size", str(args.image_size)]
        baselines = {}
        for engine in ("tensorflow", "onnx"):
            logger.info("bare model (%s) on %s", engine, root)
            baselines[engine] = run_side("bench.baseline", [*common, *sizes, "--engine", engine], env)
        logger.info("pipeline (%s) on %s", env.get("FRUITS_ENGINE", "auto"), root)
        pipeline = run_side("bench.pipeline", [*common, "--output", str(Path(tmp) / "out")], env)
    tf_s, onnx_s = baselines["tensorflow"]["seconds"], baselines["onnx"]["seconds"]
    result = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cores": os.cpu_count(),
        "root": str(args.root),
        "requested_images": args.images,
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "engine": env.get("FRUITS_ENGINE", "auto"),
        "onnx_conversion_s": conversion_s,
        "baseline": baselines["tensorflow"],
        "baseline_onnx": baselines["onnx"],
        "pipeline": pipeline,
        "ratio": round(pipeline["seconds"] / tf_s, 3),
        "speedup_vs_tensorflow": round(tf_s / pipeline["seconds"], 3),
        "ratio_vs_onnx": round(pipeline["seconds"] / onnx_s, 3),
        "targets_met": {
            "throughput_3x_tensorflow": tf_s / pipeline["seconds"] >= 3.0,
            "within_1.3x_onnx": pipeline["seconds"] <= 1.3 * onnx_s,
            "peak_rss_4gib": pipeline["peak_rss_mib"]["total"] <= 4096,
        },
        "one_pass_per_image": pipeline["counters"]["cnn_images"]
        == pipeline["images"]
        == baselines["tensorflow"]["images"]
        == baselines["onnx"]["images"],
    }
    out = write_json(result, args.json, "bench")
    print(report(result))
    print(f"JSON: {out}")
    if not result["one_pass_per_image"] or not pipeline["success"]:
        raise SystemExit("benchmark invariant failed: see above")


if __name__ == "__main__":
    main()
