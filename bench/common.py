"""What the benchmarks share: where the repository and the data are, picking and linking photos, running a side in
its own process, writing results. The benchmarks import it; none imports another benchmark's script."""

import json
import subprocess
import sys
from pathlib import Path

from spark_code.featurize.cnn import WEIGHTS_FILE

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DEFAULT_ROOT = SHARED / "fruits-360" / "Test"
DEFAULT_WEIGHTS = SHARED / "weights" / WEIGHTS_FILE
RESULTS = REPO / "bench" / "results"


def image_files(root: Path) -> list[Path]:
    """Every image file under root, in a stable order (same glob as the pipeline)."""
    extensions = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in extensions and p.is_file())


def stratified(root: Path, n: int | None) -> dict[str, list[Path]]:
    """Per class folder, its image files; with n, about n in all, spread evenly within each class."""
    by_class: dict[str, list[Path]] = {}
    for path in image_files(root):
        by_class.setdefault(str(path.parent.relative_to(root)), []).append(path)
    total = sum(len(files) for files in by_class.values())
    if n is None or n >= total:
        return by_class
    picked = {}
    for label, files in by_class.items():
        k = max(1, round(n * len(files) / total))
        picked[label] = [files[int(i * len(files) / k)] for i in range(k)]
    return picked


def link_tree(selection: dict[str, list[Path]], target: Path) -> Path:
    """A folder of symlinks with the same class folders: the subset both sides read."""
    for label, files in selection.items():
        (target / label).mkdir(parents=True, exist_ok=True)
        for path in files:
            (target / label / path.name).symlink_to(path)
    return target


def warm_cache(selection: dict[str, list[Path]]) -> None:
    """Read every file once so neither side pays the cold page cache."""
    for files in selection.values():
        for path in files:
            path.read_bytes()


def run_side(module: str, args: list[str], env: dict) -> dict:
    """Run one side in its own process (own memory, own TF runtime) and parse its JSON line."""
    cmd = [sys.executable, "-m", module, *args]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{module} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def write_json(result: dict, path: Path | None, kind: str) -> Path:
    """Write the result as JSON (default: bench/results/<kind>-<time>.json); return the path."""
    out = path or RESULTS / f"{kind}-{result['when'].replace(':', '')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return out


def session():
    """A local Spark session with the project's settings and 4 GiB for the driver, quiet."""
    from fruits_assets.deploy.spark_conf import local_session

    spark = local_session("local[*]", {"spark.driver.memory": "4g"})
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def drawn_non_fruit() -> dict[str, bytes]:
    """PNG bytes of flat colours, noise and text: what a fruit classifier must not name (the tests' and the open-set
    benchmark's non-fruit images)."""
    import io

    import numpy as np
    from PIL import Image, ImageDraw

    images = {f"flat {c}": Image.new("RGB", (120, 120), c) for c in ("white", "black", "#3060d0", "#d04040")}
    images["noise"] = Image.fromarray(np.random.default_rng(5).integers(0, 256, size=(160, 160, 3), dtype=np.uint8))
    images["text"] = Image.new("RGB", (200, 120), "white")
    ImageDraw.Draw(images["text"]).multiline_text((10, 10), "Invoice 2026\nTotal: 42.00 EUR\nThank you!", fill="black")
    encoded = {}
    for name, image in images.items():
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        encoded[name] = buffer.getvalue()
    return encoded
