"""The emulated EMR's YARN: Hadoop's own ResourceManager and NodeManagers (MiniYARNCluster, at pyspark's Hadoop
version) with physical-memory enforcement on, the recipe's executor settings scaled to this machine, and what each
step's containers used (`python -m tests.emr_emulator.yarn` fetches the jars; ./install.sh runs it)."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from spark_code.storage import ivy

logger = logging.getLogger(__name__)

HADOOP = "3.3.4"  # pyspark 3.5's Hadoop (spark_code.storage.s3a.hadoop_version): YARN's daemons at the same version
CACHE = ivy.DEFAULT_CACHE.parent / "yarn"  # apart from Spark's jars: nothing here lands on a Spark classpath
# One fetch each: Ivy keeps one artifact per module, so hadoop-common's jar and its tests jar come in two fetches.
COORDINATES = (
    f"org.apache.hadoop:hadoop-minicluster:{HADOOP}",
    f"org.apache.hadoop:hadoop-common:{HADOOP}",
    "junit:junit:4.13.2",
)
MARKERS = (  # a jar of each fetch, by Ivy's file name
    f"org.apache.hadoop_hadoop-yarn-server-tests-{HADOOP}-tests.jar",
    f"org.apache.hadoop_hadoop-common-{HADOOP}.jar",
    "junit_junit-4.13.2.jar",
)
LAUNCHER = Path(__file__).with_name("YarnNode.java")
JAVA_OPENS = [
    f"--add-opens=java.base/{p}=ALL-UNNAMED"
    for p in (
        "java.lang",
        "java.lang.reflect",
        "java.util",
        "java.util.concurrent",
        "java.io",
        "java.net",
        "java.nio",
        "sun.nio.ch",
    )
]  # Hadoop 3.3 on Java 17

# EMR's YARN memory of an m5.xlarge (or m7i.xlarge) node: yarn.nodemanager.resource.memory-mb = 12288 of its 16 GiB.
# The recipe (fruits_assets.deploy.spark_conf.EMR_SPARK_CONF) gives each executor 3g + 2g overhead: 2 per node = 10 GiB.
NODE_YARN_MB = 12288
# This machine's NodeManagers get half of that (2 x 6144 MB of its 24 GiB), each executor half the recipe's memory
# (1536m + 1024m): a quarter (768m + 512m) is less than an executor JVM and a Python worker with the CNN hold at
# once (1.3 GB measured: YARN killed them), as those do not shrink with the node.
SCALE = 2
CORE_NODES = 2  # the recipe's core nodes: one NodeManager each


def fetch(cache: Path = CACHE) -> Path:
    """The jars of YARN's daemons in `cache` (fetched once with Spark's Ivy); return their folder."""
    for coordinate, marker in zip(COORDINATES, MARKERS, strict=True):
        if not (cache / "jars" / marker).exists():
            ivy.fetch(coordinate, cache)
    return cache / "jars"


def classpath(cache: Path = CACHE) -> str:
    """The daemons' classpath, or an error naming the fix when ./install.sh has not fetched them."""
    missing = [m for m in MARKERS if not (cache / "jars" / m).exists()]
    if missing:
        raise ivy.JarsMissingError(
            f"the emulated EMR's YARN needs {', '.join(missing)} in {cache / 'jars'}: run ./install.sh, or "
            f"{sys.executable} -m tests.emr_emulator.yarn (fetches them once from Maven Central)"
        )
    return str(cache / "jars" / "*")


def _mb(size: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([mg])", size.lower()).groups()
    return int(number) * (1024 if unit == "g" else 1)


def scaled(conf: dict[str, str], scale: int = SCALE) -> dict[str, str]:
    """The recipe's executor and driver memory divided by `scale` (the cores as they are)."""
    keys = ("spark.executor.memory", "spark.executor.memoryOverhead", "spark.driver.memory")
    return {key: f"{_mb(conf[key]) // scale}m" for key in keys if key in conf}


def containers_fit(conf: dict[str, str], node_mb: int = NODE_YARN_MB, per_node: int = 2) -> bool:
    """Whether `per_node` executors of these settings (memory + overhead) fit a node's YARN memory."""
    return per_node * (_mb(conf["spark.executor.memory"]) + _mb(conf["spark.executor.memoryOverhead"])) <= node_mb


@dataclass
class Usage:
    """What one step's YARN containers used: their count and each one's peak resident memory (MiB)."""

    peaks: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict:
        """{containers, peak_container_mib}."""
        return {"containers": len(self.peaks), "peak_container_mib": round(max(self.peaks.values(), default=0.0), 1)}


class Yarn:
    """A cluster's YARN (its core nodes): `start(env)`, `conf_dir`, `spark_conf()`, `watch()` a step, `stop()`."""

    def __init__(self, root: Path, node_managers: int = CORE_NODES, scale: int = SCALE, cache: Path = CACHE):
        self.root, self.node_managers, self.scale, self.cache = root, node_managers, scale, cache
        self.conf_dir = self.root / "conf"
        self.process: subprocess.Popen | None = None

    def start(self, env: dict[str, str], timeout_s: float = 180) -> Yarn:
        """Start the ResourceManager and NodeManagers (physical memory enforced, virtual not, as on EMR) in the
        nodes' environment `env` (their containers inherit it: the instance profile's credentials); wait until their
        yarn-site.xml is written."""
        self.conf_dir.mkdir(parents=True, exist_ok=True)  # (also creates the root)
        site = self.conf_dir / "yarn-site.xml"
        site.unlink(missing_ok=True)
        node_mb = NODE_YARN_MB // self.scale
        settings = {
            "yarn.minicluster.control-resource-monitoring": "true",  # MiniYARNCluster turns monitoring off otherwise
            "yarn.minicluster.yarn.nodemanager.resource.memory-mb": node_mb,
            "yarn.nodemanager.resource.memory-mb": node_mb,
            "yarn.nodemanager.pmem-check-enabled": "true",
            "yarn.nodemanager.vmem-check-enabled": "false",  # EMR's default
            "yarn.nodemanager.resource.memory.enforced": "false",  # polling (EMR has no cgroups), not cgroups' OOM
            "yarn.nodemanager.container-monitor.interval-ms": 1000,
            "yarn.scheduler.minimum-allocation-mb": 32,  # EMR's default
            "yarn.nodemanager.delete.debug-delay-sec": 0,
        }
        command = ["java", "-Xmx512m", *JAVA_OPENS, "-cp", classpath(self.cache), str(LAUNCHER), str(site)]
        command += [str(self.node_managers), *(f"{k}={v}" for k, v in settings.items())]
        log = open(self.root / "yarn.log", "wb")  # noqa: SIM115  the daemons' log, open while they run
        java_home = str(Path(os.path.realpath(shutil.which("java") or "java")).parents[1])
        env = {"JAVA_HOME": java_home, **env}  # the containers' launch scripts run $JAVA_HOME/bin/java
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=self.root, env=env)
        deadline = time.monotonic() + timeout_s
        while not site.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"YARN did not start: see {self.root / 'yarn.log'}")
            time.sleep(0.5)
        logger.info("YARN up: %d NodeManagers of %d MB (%s)", self.node_managers, node_mb, site)
        return self

    def spark_conf(self, recipe: dict[str, str]) -> dict[str, str]:
        """What a step's spark-submit gets on top of the launcher's: pyspark's jars as YARN's (on this disk, as
        EMR's are on its nodes), the recipe's memory scaled to these NodeManagers, and its executors to this
        machine's cores: one of the recipe's 2-core executors (an m5.xlarge's 4 vCPUs hold two, 2 nodes four)."""
        spark_home = Path(os.environ.get("SPARK_HOME") or _pyspark_home())
        cores = int(recipe.get("spark.executor.cores", "1"))
        executors = max(1, min(2 * CORE_NODES, (os.cpu_count() or 1) // cores))  # never more than the recipe's
        return {
            "spark.yarn.jars": f"local:{spark_home / 'jars'}/*",
            "spark.executor.instances": str(executors),
            **scaled(recipe, self.scale),
        }

    def watch(self, stop: threading.Event, every_s: float = 0.5) -> Usage:
        """Sample the resident memory of every YARN container's processes (the executor JVM and its Python
        workers: what the NodeManager checks) until `stop` is set; the peak of each container."""
        usage, appcache = Usage(), str(self.root)
        while not stop.wait(every_s):
            sums: dict[str, float] = {}
            for process in psutil.process_iter(["cwd", "memory_info"]):
                cwd = process.info.get("cwd") or ""
                match = re.search(r"/(container_\w+)", cwd) if cwd.startswith(appcache) else None
                if match and process.info.get("memory_info"):
                    sums[match.group(1)] = sums.get(match.group(1), 0.0) + process.info["memory_info"].rss / 2**20
            for container, mib in sums.items():
                usage.peaks[container] = max(usage.peaks.get(container, 0.0), mib)
        return usage

    def stop(self) -> None:
        """Stop the daemons (their shutdown hook stops the cluster)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()


def _pyspark_home() -> str:
    import pyspark

    return str(Path(pyspark.__file__).parent)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(fetch())
