"""The Spark JVM's class archive: made once (install.sh), mapped by every local session, ignored when absent."""

import os
import subprocess
import sys
from pathlib import Path

import pyspark

from fruits_assets.deploy import class_archive
from fruits_assets.deploy.spark_conf import local_spark_config

MAPPED_OR_FAIL = """
import sys
from fruits_assets.deploy.spark_conf import local_session
options = sys.argv[1].replace("-Xshare:auto", "-Xshare:on")  # on: a JVM that cannot map the archive does not start
spark = local_session("local[1]", {"spark.driver.extraJavaOptions": options, "spark.ui.enabled": "false"})
print("rows", spark.range(5).count())
"""


def test_no_archive_no_option(tmp_path):
    assert class_archive.java_options(tmp_path) == {}
    assert class_archive.archive_path(tmp_path).parent == tmp_path


def test_a_local_session_maps_the_archive_install_made():
    path = class_archive.build()  # install.sh made it; made here otherwise
    options = class_archive.java_options()["spark.driver.extraJavaOptions"]
    driver = local_spark_config()["spark.driver.extraJavaOptions"]  # the run's JIT and GC flags, then the archive
    assert str(path) in options and driver.endswith(options) and driver != options
    done = subprocess.run([sys.executable, "-c", MAPPED_OR_FAIL, driver], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "rows 5" in done.stdout, done.stderr[-2000:]


def test_an_archive_is_not_mapped_once_a_jar_is_reinstalled(tmp_path):
    current = class_archive.archive_path(tmp_path)
    current.touch()  # stands for an archive made for the jars as they are now
    assert str(current) in class_archive.java_options(tmp_path)["spark.driver.extraJavaOptions"]
    jar = sorted((Path(pyspark.__file__).parent / "jars").glob("*.jar"))[0]
    was = jar.stat()
    try:
        os.utime(jar, ns=(was.st_atime_ns, was.st_mtime_ns + 10**9))  # as a re-install leaves it: the JVM refuses
        assert class_archive.archive_path(tmp_path) != current
        assert class_archive.java_options(tmp_path) == {}
    finally:
        os.utime(jar, ns=(was.st_atime_ns, was.st_mtime_ns))
    assert class_archive.archive_path(tmp_path) == current


def test_build_removes_this_venvs_stale_archives_and_keeps_other_venvs(tmp_path):
    current = class_archive.archive_path(tmp_path)
    venv = current.name[: current.name.rindex("-")]
    stale, legacy = tmp_path / f"{venv}-000000000000.jsa", tmp_path / f"{venv}.jsa"
    other_venv = tmp_path / "spark-3.5.8-aaaaaaaaaaaa-bbbbbbbbbbbb.jsa"
    for path in (current, stale, legacy, other_venv):
        path.touch()
    assert class_archive.build(tmp_path) == current  # current exists: no JVM runs
    assert sorted(tmp_path.iterdir()) == sorted([current, other_venv])
