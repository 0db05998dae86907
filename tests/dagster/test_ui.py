"""The Dagster UI as a person uses it: `dagster dev` on 127.0.0.1, headless Chromium, "Materialize all", metadata."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from fruits_assets.defs import ASSETS as DEFINED_ASSETS
from spark_code.ingest import batches
from tests.conftest import REPO
from tests.helpers import free_port

pytestmark = pytest.mark.slow  # a browser, a cluster, moto or whole materializations

ASSETS = tuple(key.to_user_string() for definition in DEFINED_ASSETS for key in definition.keys)
PARTITIONED = tuple(
    key.to_user_string() for definition in DEFINED_ASSETS if definition.partitions_def for key in definition.keys
)
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def graphql(base: str, query: str) -> dict:
    """POST a GraphQL query to the webserver."""
    request = urllib.request.Request(
        f"{base}/graphql", json.dumps({"query": query}).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)["data"]


def _wait_until_up(base: str, process: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "dagster dev exited"
        try:
            if graphql(base, "{ assetNodes { id } }")["assetNodes"]:
                return
        except OSError:
            pass
        time.sleep(1)
    raise TimeoutError("dagster dev did not come up")


@pytest.fixture(scope="module")
def dagster_dev(sample_root, training_root, weights_path, tmp_path_factory):
    """`dagster dev` in the repo root with a temporary DAGSTER_HOME, on the small sample; stopped afterwards."""
    tmp = tmp_path_factory.mktemp("dagster-dev")
    (tmp / "home").mkdir()
    (tmp / "home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    port = free_port()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(tmp / "home"),
        "FRUITS_IMAGE_ROOT": str(sample_root),
        "FRUITS_TRAINING_ROOT": str(training_root),
        "FRUITS_OUTPUT_URI": str(tmp / "out"),
        "FRUITS_WEIGHTS": weights_path,
    }
    dagster = Path(sys.executable).parent / "dagster"
    cmd = [str(dagster), "dev", "-h", "127.0.0.1", "-p", str(port)]
    log = (tmp / "dagster-dev.log").open("w")
    process = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(base, process)
        yield base
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def _wait_for_run(base: str, timeout: float = 600) -> str:
    query = "{ runsOrError { ... on Runs { results { runId status } } } }"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = graphql(base, query)["runsOrError"]["results"]
        if runs and runs[0]["status"] in ("SUCCESS", "FAILURE", "CANCELED"):
            return runs[0]["status"]
        time.sleep(2)
    raise TimeoutError("the launched run did not finish")


def _dismiss_popups(page) -> None:
    with contextlib.suppress(Exception):  # the community pop-up shows only on a first visit
        page.get_by_role("button", name="Skip").click(timeout=5000)


def _hide_side_panels(page) -> None:
    """Hide the navigation and the asset list: the graph then fits with each node's status card (docs/lineage.png)."""
    page.get_by_role("button", name="Hide navigation").click()
    page.get_by_placeholder("Jump to…").locator("xpath=following::button[1]").click()  # hide the asset list
    page.wait_for_timeout(2000)


def _quarantined(expected_outcomes: dict[str, str]) -> list[str]:
    return [path for path, outcome in expected_outcomes.items() if outcome == "quarantined"]


def _check_run_page(page, base: str, expected_outcomes: dict[str, str]) -> None:
    """The run's page, its events filtered to materializations: each asset's metadata and the quarantined files."""
    run_id = graphql(base, "{ runsOrError { ... on Runs { results { runId } } } }")["runsOrError"]["results"][0][
        "runId"
    ]
    page.set_viewport_size({"width": 1800, "height": 6000})  # the event list renders only the rows in view
    page.goto(f"{base}/runs/{run_id}", wait_until="networkidle")
    _dismiss_popups(page)
    page.get_by_placeholder("Filter…").fill("type:ASSET_MATERIALIZATION")
    page.keyboard.press("Enter")
    page.get_by_text("Materialized value fruit_classifier.").wait_for(timeout=30000)
    run_text = page.inner_text("body")
    for asset in ASSETS:
        assert f"Materialized value {asset}." in run_text, run_text
    for key in ("image_count", "class_count", "featurized", "cnn_images", "quarantined_files", "explained_variance"):
        assert f"\n{key}\n" in run_text, key
    assert "\nk\n" in run_text and "variance_plot" in run_text and "pca_scatter" in run_text
    assert "\naccuracy\n" in run_text and "per_class_accuracy" in run_text
    for path in _quarantined(expected_outcomes):  # the quarantine table, path and reason per file
        assert path in run_text, path
    assert "undecodable image" in run_text and "empty file (0 bytes)" in run_text and "no class folder" in run_text
    page.set_viewport_size({"width": 1800, "height": 700})


def test_materialize_all_from_the_ui(dagster_dev, expected_outcomes, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        page = browser.new_page(viewport={"width": 1800, "height": 700})
        page.goto(f"{dagster_dev}/asset-groups", wait_until="networkidle")
        _dismiss_popups(page)
        page.get_by_role("button", name="Materialize all").click()
        page.get_by_text("Add a partition").click()  # the image-level assets are partitioned by ingest batch
        page.get_by_placeholder("name").fill(batches.new_key())
        page.get_by_role("button", name="Save").click()
        page.get_by_role("button", name="Launch 1 run").click()
        assert _wait_for_run(dagster_dev) == "SUCCESS"
        _check_run_page(page, dagster_dev, expected_outcomes)

        page.goto(f"{dagster_dev}/asset-groups", wait_until="networkidle")
        _dismiss_popups(page)
        _hide_side_panels(page)
        page.get_by_text("Materialized").first.wait_for(timeout=30000)
        graph_text = page.inner_text("body")
        assert graph_text.count("Materialized") == len(ASSETS) - len(PARTITIONED), graph_text
        assert graph_text.count("100% filled") == len(PARTITIONED), graph_text  # the one batch, on the 3 of them
        assert (
            "3 / 3 Passed" in graph_text and "2 / 2 Passed" in graph_text and "4 / 4 Passed" in graph_text
        )  # 9 checks
        for asset in ASSETS:
            assert asset in graph_text
        page.screenshot(path=os.environ.get("FRUITS_UI_SCREENSHOT", str(tmp_path / "lineage.png")))

        page.set_viewport_size({"width": 1400, "height": 900})
        page.goto(f"{dagster_dev}/assets/pca_features", wait_until="networkidle")
        page.get_by_text("explained_variance").first.wait_for(timeout=30000)
        pca_text = page.inner_text("body")
        assert "cumulative_variance" in pca_text and "\nk\n" in pca_text  # variance_target only when k is by variance
        assert "variance_plot" in pca_text and "pca_scatter" in pca_text
        for shown in range(2):  # the variance curve and the scatter: inline PNGs behind "[Show Markdown]"
            page.get_by_text("[Show Markdown]").nth(shown).click()
            plot = page.locator("img[src^='data:image/png']").first
            plot.wait_for(timeout=10000)
            assert plot.bounding_box()["width"] > 200
            if shown == 0:  # docs/pca_features.png: the metadata (k, explained variance) under the variance curve
                page.wait_for_timeout(1000)
                page.screenshot(path=os.environ.get("FRUITS_UI_METADATA_SCREENSHOT", str(tmp_path / "pca.png")))
            page.get_by_role("button", name="Close").click()
            plot.wait_for(state="detached", timeout=10000)

        page.goto(f"{dagster_dev}/assets/fruit_classifier", wait_until="networkidle")
        page.get_by_text("macro_f1").first.wait_for(timeout=30000)
        assert "raw_accuracy" in page.inner_text("body")

        page.goto(f"{dagster_dev}/assets/quarantined_images", wait_until="networkidle")
        page.get_by_text("quarantined_files").first.wait_for(timeout=30000)
        quarantine_text = page.inner_text("body")
        for path in _quarantined(expected_outcomes):
            assert path in quarantine_text, quarantine_text

        page.goto(f"{dagster_dev}/assets/raw_images", wait_until="networkidle")
        page.get_by_text("image_count").first.wait_for(timeout=30000)
        assert "class_count" in page.inner_text("body")

        page.goto(f"{dagster_dev}/automation", wait_until="networkidle")
        page.get_by_text("new_images").first.wait_for(timeout=30000)
        assert "daily_refit" in page.inner_text("body")  # the sensor and the schedule, both visible
        browser.close()
    materialized = graphql(
        dagster_dev,
        "{ assetNodes { assetKey { path } assetMaterializations(limit: 1) { runId } } }",
    )["assetNodes"]
    assert all(node["assetMaterializations"] for node in materialized)
