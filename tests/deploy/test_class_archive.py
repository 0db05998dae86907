"""The Spark JVM's class archive: made once (install.sh), mapped by every local session, ignored when absent."""

import subprocess
import sys

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
    assert str(path) in options and local_spark_config()["spark.driver.extraJavaOptions"] == options
    done = subprocess.run([sys.executable, "-c", MAPPED_OR_FAIL, options], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "rows 5" in done.stdout, done.stderr[-2000:]
