"""The new-photos sensor: what each tick sees, when a half-written file counts, the batch its run takes; the daily
refit schedule."""

import os
import shutil
import time

import pytest
from dagster import DagsterInstance, build_schedule_context, build_sensor_context

from fruits_assets.defs.automation import daily_refit, new_images
from fruits_assets.defs.partitions import CHANGES_TAG
from fruits_assets.deploy.deployments import local_resources
from fruits_assets.io.resources import ImageSource
from spark_code.ingest import batches, snapshot
from tests.conftest import CLASSES, FRUITS, copy_photos, first_images
from tests.helpers import materialize_features, metadata_of, table

pytestmark = pytest.mark.slow  # a browser, a cluster, moto or whole materializations

# ---- the sensor ------------------------------------------------------------------------------------------------


def _tick(root, cursor=None, settle=0.0):
    context = build_sensor_context(
        cursor=cursor, resources={"image_source": ImageSource(root=str(root), settle_seconds=settle)}
    )
    result = new_images(context)
    return result, context.cursor if result.cursor is None else result.cursor


def test_sensor_sees_everything_then_nothing_then_only_what_changed(tmp_path):
    copy_photos(tmp_path, CLASSES[:2], 2)
    first, cursor = _tick(tmp_path)
    assert len(first.run_requests) == 1 and first.run_requests[0].tags["fruits/new"] == "4"
    batch = first.run_requests[0].partition_key  # a new ingest batch, added as a dynamic partition
    assert batches.check_key(batch) and first.dynamic_partitions_requests[0].partition_keys == [batch]
    second, cursor = _tick(tmp_path, cursor)
    assert not second.run_requests and "no settled change" in second.skip_reason.skip_message
    extra = first_images(FRUITS / CLASSES[2], 2)
    (tmp_path / CLASSES[2]).mkdir()
    for image in extra:
        shutil.copy(image, tmp_path / CLASSES[2] / image.name)
    third, cursor = _tick(tmp_path, cursor)
    assert third.run_requests[0].tags["fruits/new"] == "2" and third.run_requests[0].tags["fruits/changed"] == "0"
    state, _ = snapshot.advance(snapshot.State.decode(cursor), snapshot.list_root(str(tmp_path)), 0)
    assert set(state.accepted) == {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.jpg")}
    edited = next((tmp_path / CLASSES[0]).glob("*.jpg"))
    edited.write_bytes(edited.read_bytes() + b"\0")
    gone = next((tmp_path / CLASSES[1]).glob("*.jpg"))
    gone.unlink()
    fourth, cursor = _tick(tmp_path, cursor)
    tags = fourth.run_requests[0].tags
    assert (tags["fruits/new"], tags["fruits/changed"], tags["fruits/deleted"]) == ("0", "1", "1")
    assert fourth.run_requests[0].run_key != third.run_requests[0].run_key
    assert len({r.run_requests[0].partition_key for r in (first, third, fourth)}) == 3


def test_changes_name_exactly_the_files():
    before = snapshot.State({"a/1.jpg": (10, 1), "a/2.jpg": (10, 1), "b/3.jpg": (10, 1)})
    now = {"a/1.jpg": (10, 1), "a/2.jpg": (11, 2), "c/4.jpg": (5, 1)}
    state, changes = snapshot.advance(before, now, settle_s=0, now_ns=10**12)
    assert (changes.new, changes.changed, changes.deleted) == (["c/4.jpg"], ["a/2.jpg"], ["b/3.jpg"])
    assert state.accepted == now
    assert snapshot.State.decode(state.encode()).accepted == now  # the cursor survives a restart
    key = snapshot.run_key("cursor-1", changes)  # the same tick evaluated again: the same run
    assert key == snapshot.run_key("cursor-1", changes) != snapshot.run_key("cursor-2", changes)
    _, other = snapshot.advance(before, {**now, "a/2.jpg": (12, 3)}, settle_s=0, now_ns=10**12)
    assert snapshot.run_key("cursor-1", other) != key  # the same paths, another version of one of them


def test_half_written_file_waits_until_its_size_holds(tmp_path):
    copy_photos(tmp_path, CLASSES[:2], 1)
    old = time.time() - 3600
    for path in tmp_path.rglob("*.jpg"):
        os.utime(path, (old, old))
    _, cursor = _tick(tmp_path, settle=60)
    growing = tmp_path / CLASSES[0] / "upload.jpg"
    data = first_images(FRUITS / CLASSES[0], 3)[2].read_bytes()
    growing.write_bytes(data[: len(data) // 2])  # just written: still being uploaded
    result, cursor = _tick(tmp_path, cursor, settle=60)
    assert not result.run_requests and "1 file(s) still being written" in result.skip_reason.skip_message
    growing.write_bytes(data)  # the size changed between the two listings: wait again
    result, cursor = _tick(tmp_path, cursor, settle=60)
    assert not result.run_requests
    result, cursor = _tick(tmp_path, cursor, settle=60)  # same size and mtime as last tick: complete
    assert result.run_requests[0].tags["fruits/new"] == "1"


def test_schedule_refits_daily_and_skips_an_output_without_batches(tmp_path):
    from fruits_assets.io.resources import OutputLocation

    assert daily_refit.cron_schedule == "0 3 * * *"
    context = build_schedule_context(resources={"output": OutputLocation(base_uri=str(tmp_path))})
    result = daily_refit.evaluate_tick(context)
    assert not result.run_requests and "no refit" in result.skip_message  # nothing to fit on: no run, no step


def test_a_sensor_run_takes_the_batch_the_sensor_found_without_listing(spark, weights_path, tmp_path):
    from spark_code.featurize import udf

    root, output = tmp_path / "root", tmp_path / "out"
    copy_photos(root, CLASSES[:2], 2)
    resources = local_resources(str(root), str(output), weights_path)
    state = resources["image_source"].state_uri  # the sensor keeps its snapshots beside the tables
    source = ImageSource(root=str(root), state_uri=state, settle_seconds=0.0)  # a photo counts once copied
    instance, cursor = DagsterInstance.ephemeral(), None

    def tick_and_run():
        nonlocal cursor
        ticked = new_images(build_sensor_context(cursor=cursor, resources={"image_source": source}))
        request, cursor = ticked.run_requests[0], ticked.cursor
        before = udf.process_totals()["cnn_images"]
        result = materialize_features(resources, instance, key=request.partition_key, tags=request.tags)
        return request, result, udf.process_totals()["cnn_images"] - before

    request, result, cnn_images = tick_and_run()
    assert CHANGES_TAG in request.tags and cnn_images == 4 and metadata_of(result, "raw_images")["listing"] == "sensor"
    new = first_images(FRUITS / CLASSES[2], 1)[0]
    (root / CLASSES[2]).mkdir()
    shutil.copy(new, root / CLASSES[2] / new.name)
    gone = sorted((root / CLASSES[0]).glob("*.jpg"))[0]
    gone.unlink()
    request, result, cnn_images = tick_and_run()
    raw = metadata_of(result, "raw_images")
    assert (raw["listing"], raw["new"], raw["changed"], raw["deleted"], cnn_images) == ("sensor", 1, 0, 1, 1)
    assert all(e.passed for e in result.get_asset_check_evaluations())
    current = {r.path for r in table(spark, output, "pca_features").collect()}
    assert current == {f"file:{p}" for p in root.rglob("*.jpg")}  # the union of the batches: the root as it is now
