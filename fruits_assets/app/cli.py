"""`fruits classify PHOTO...` (top-3 fruit classes per photo, without Spark) and `fruits serve` (the same over HTTP)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from fruits_assets.deploy.settings import Settings, SettingsError
from spark_code.classify.openset import SCORES
from spark_code.featurize.cnn import ENGINES, WeightsError

logger = logging.getLogger(__name__)


def _parser(settings: Settings) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fruits", description="Fruits! image features: the app's engine.")
    commands = parser.add_subparsers(dest="command", required=True)
    classify = commands.add_parser("classify", help="name the fruit in each photo (top-3 classes)")
    classify.add_argument("photos", nargs="+", help="photo files (any size, any format Pillow reads)")
    classify.add_argument(
        "--models",
        default=f"{settings.output_uri.rstrip('/')}/models",
        help="models folder holding fruit_classifier/ (default: $FRUITS_OUTPUT_URI/models, else ./data/models)",
    )
    classify.add_argument(
        "--weights", default=settings.weights, help="Keras weights file (default: $FRUITS_WEIGHTS or ../shared)"
    )
    classify.add_argument(
        "--unknown-score",
        choices=SCORES,
        default=None,
        help="score that decides `unknown` (default: the one saved with the classifier, knn_probability)",
    )
    classify.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="threshold of that score: least probability for max_probability, largest distance for knn and "
        "mahalanobis (default: the one calibrated with the classifier to accept 95%% of known-class photos)",
    )
    classify.add_argument("--top", type=int, default=3)
    classify.add_argument(
        "--engine", choices=ENGINES, default=settings.engine, help="CNN runtime (default: $FRUITS_ENGINE, else auto)"
    )
    classify.add_argument("--json", action="store_true", help="one JSON object per photo")
    _serve_parser(commands, settings)
    return parser


def _serve_parser(commands, settings: Settings) -> None:
    serve = commands.add_parser("serve", help="the engine over HTTP: POST /classify, a web page at /, GET /healthz")
    serve.add_argument(
        "--models",
        default=f"{settings.output_uri.rstrip('/')}/models",
        help="models folder (local or s3://) holding fruit_classifier/ (default: $FRUITS_OUTPUT_URI/models); "
        "newer committed versions are picked up while serving",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--weights", default=settings.weights, help="Keras weights file (default: $FRUITS_WEIGHTS)")
    serve.add_argument(
        "--engine", choices=ENGINES, default=settings.engine, help="CNN runtime (default: $FRUITS_ENGINE, else auto)"
    )


def _line(prediction, as_json: bool) -> str:
    if as_json:
        return json.dumps(prediction.as_json())
    top = ", ".join(f"{label} {p:.2f}" for label, p in prediction.top)
    return f"{prediction.path}: {prediction.label}  ({top})"


def classify(args: argparse.Namespace, settings: Settings) -> int:
    """Load once, classify every photo; unreadable photos are reported on stderr and make the exit status 1."""
    from fruits_assets.app.engine import FruitClassifier, NotAnImageError
    from spark_code.classify.serving import load_pipeline
    from spark_code.storage.versions import ModelNotFoundError, local_folder

    try:
        folder = local_folder(args.models, "fruit_classifier")
        engine = FruitClassifier(
            load_pipeline(folder),
            args.weights,
            args.threshold,
            engine=args.engine,
            onnx_cache=settings.onnx_cache,
            score=args.unknown_score,
        )
    except (ModelNotFoundError, WeightsError, ValueError) as error:
        print(f"fruits: {error}", file=sys.stderr)
        return 2
    failed = 0
    for photo in args.photos:
        started = time.perf_counter()
        try:
            print(_line(engine.classify(photo), args.json), flush=True)
        except (NotAnImageError, OSError) as error:
            failed += 1
            print(f"fruits: cannot classify {photo}: {error}", file=sys.stderr)
        logger.info("%s classified in %.3f s", photo, time.perf_counter() - started)
    return 1 if failed else 0


def serve(args: argparse.Namespace, settings: Settings) -> int:
    """Check the models folder, then serve until interrupted (the classifier loads once the server is up)."""
    from fruits_assets.app.api import serve as run_server
    from fruits_assets.app.models import RemoteModelsError, check_models_folder
    from fruits_assets.app.service import ServeOptions
    from spark_code.storage.versions import ModelNotFoundError

    try:
        folder = check_models_folder(args.models)
    except (RemoteModelsError, ModelNotFoundError) as error:
        print(f"fruits: {error}", file=sys.stderr)
        return 2
    logger.warning("fruits serve: %s on http://%s:%d", folder, args.host, args.port)
    options = ServeOptions.from_settings(settings, args.models, args.weights, args.engine)
    run_server(options, args.host, args.port, settings.log_level)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `fruits` console script."""
    try:
        settings = Settings.from_env()
    except SettingsError as error:
        print(f"fruits: {error}", file=sys.stderr)
        return 2
    args = _parser(settings).parse_args(argv)
    logging.basicConfig(level=settings.log_level, format="%(message)s")
    return serve(args, settings) if args.command == "serve" else classify(args, settings)


if __name__ == "__main__":
    sys.exit(main())
