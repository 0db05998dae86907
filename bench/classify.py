"""The app's path: start-up and per-photo seconds of `FruitClassifier` (no Spark) on a few photos; JSON out."""

import argparse
import json
import time
from pathlib import Path

from bench.common import SHARED
from fruits_assets.deploy.settings import Settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default=f"{Settings.from_env().output_uri}/models")
    parser.add_argument("--photos", type=Path, default=SHARED / "fruits-360-original" / "Test")
    parser.add_argument("--n", type=int, default=50, help="photos to classify (spread over the classes)")
    args = parser.parse_args()
    started = time.perf_counter()
    from fruits_assets.app.engine import FruitClassifier
    from spark_code.classify.serving import load_pipeline
    from spark_code.storage.versions import local_folder

    engine = FruitClassifier(load_pipeline(local_folder(args.models, "fruit_classifier")), Settings.from_env().weights)
    startup = time.perf_counter() - started
    photos = sorted(args.photos.rglob("*.jpg"))
    photos = photos[:: max(1, len(photos) // args.n)][: args.n]
    seconds = []
    for photo in photos:
        began = time.perf_counter()
        engine.classify(photo)
        seconds.append(time.perf_counter() - began)
    steady = sorted(seconds[1:]) or seconds
    print(
        json.dumps(
            {
                "photos": len(photos),
                "startup_s": round(startup, 2),
                "first_photo_s": round(seconds[0], 3),
                "median_photo_s": round(steady[len(steady) // 2], 4),
                "max_photo_s": round(max(steady), 4),
            }
        )
    )


if __name__ == "__main__":
    main()
