"""Progress lines while Spark works: images done/total, tasks, images/s, ETA, and a closing line."""

import logging
import re
import time

from fruits_assets.io.progress import SparkProgress, duration


def _slow_rows(counter):
    def run(rows):
        for row in rows:
            time.sleep(0.1)
            counter.add(1)
            yield row

    return run


def _progress_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "fruits_assets.io.progress"]


def test_progress_lines_follow_the_accumulator_while_tasks_finish(spark, caplog):
    sc = spark.sparkContext
    counter = sc.accumulator(0)
    progress = SparkProgress(sc, "photos", total=80, counter=counter, every_s=0.5)
    with caplog.at_level(logging.INFO, logger="fruits_assets.io.progress"), progress:
        assert sc.parallelize(range(80), 8).mapPartitions(_slow_rows(counter)).count() == 80
    lines = _progress_lines(caplog)
    assert lines[0] == "photos: 80 images to go through"
    during = [
        line for line in lines[1:-1] if re.fullmatch(r"photos: \d+/80 images \(tasks \d/8 done, \d running\).*", line)
    ]
    assert during, lines
    assert any(re.search(r"\d+/80 images .*, [\d.]+ images/s, ETA \d+ s$", line) for line in during), lines
    assert re.fullmatch(r"photos: 80 images in \d+ s \([\d.]+ images/s\)", lines[-1]), lines


def test_without_a_counter_done_is_the_share_of_finished_tasks(spark, caplog):
    sc = spark.sparkContext
    unused = sc.accumulator(0)
    with (
        caplog.at_level(logging.INFO, logger="fruits_assets.io.progress"),
        SparkProgress(sc, "rows", 800, every_s=0.5),
    ):
        sc.parallelize(range(80), 8).mapPartitions(_slow_rows(unused)).count()
    counts = [
        int(m.group(1)) for m in map(re.compile(r"rows: (\d+)/800 images \(").match, _progress_lines(caplog)) if m
    ]
    assert counts and all(n % 100 == 0 for n in counts), counts  # 800 images over 8 tasks: whole tasks only


def test_duration_reads_like_a_person_would_say_it():
    assert [duration(s) for s in (0.4, 12, 109, 3725)] == ["0 s", "12 s", "1 min 49 s", "1 h 2 min"]


def test_a_failed_step_shows_the_user_codes_error_not_dagsters_or_its_library_cause():
    from dagster._utils.error import SerializableErrorInfo

    from fruits_assets.io.console import root_cause

    library = SerializableErrorInfo("ClientError: NoSuchBucket\n", [], "ClientError")
    ours = SerializableErrorInfo(
        "DeploymentError: bucket 'x' does not exist: create it\n", [], "DeploymentError", library
    )
    wrapper = SerializableErrorInfo("Error executing resource_fn\n", [], "DagsterResourceFunctionError", ours)
    assert root_cause(wrapper) == "DeploymentError: bucket 'x' does not exist: create it"
    worker = "\n  An exception was thrown from the Python worker.\nTraceback (most recent call last):\n"
    worker += "  File \"x.py\", line 1\nModuleNotFoundError: No module named 'pillow_heif'\n"
    spark = SerializableErrorInfo(worker, [], "PythonException")
    assert root_cause(spark) == "ModuleNotFoundError: No module named 'pillow_heif'"
