"""The app runs without Spark and Dagster: its every module imported in a fresh interpreter loads neither."""

import pkgutil
import subprocess
import sys

import fruits_assets.app
from tests.conftest import REPO

HEAVY = {"pyspark", "dagster", "dagster_aws", "dagster_pyspark", "delta", "tensorflow"}


def test_the_app_imports_neither_spark_nor_dagster():
    modules = sorted(f"fruits_assets.app.{m.name}" for m in pkgutil.iter_modules(fruits_assets.app.__path__))
    assert {"fruits_assets.app.cli", "fruits_assets.app.api", "fruits_assets.app.engine"} <= set(modules)
    script = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(sorted(set({sorted(HEAVY)!r}) & {{m.split('.')[0] for m in sys.modules}}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"  # not pyspark, not dagster, not even TensorFlow (the CNN runs in ONNX/OpenVINO)


def test_the_openapi_document_names_the_answers():
    from fruits_assets.app.api import create_app
    from fruits_assets.app.service import ServeOptions

    document = create_app(ServeOptions(models="/nowhere", weights=None)).openapi()
    classify = document["paths"]["/classify"]["post"]["responses"]
    assert classify["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/Classification")
    assert {"413", "415", "422", "503"} <= set(classify)
    schemas = document["components"]["schemas"]
    assert {"Classification", "TopClass", "ModelVersions", "CnnVersion", "Health", "Problem"} <= set(schemas)
    assert "multipart/form-data" in document["paths"]["/classify"]["post"]["requestBody"]["content"]
