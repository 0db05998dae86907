"""The emulated EMR primary node: runs a cluster's bootstrap actions, then each step's spark-submit, as EMR does."""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
import logging
import os
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3

from fruits_assets.deploy.spark_conf import with_jars
from spark_code.storage import s3a, tables, uris
from tests.emr_emulator import iam, moto_emr
from tests.emr_emulator.host import STREAMS, NodeConfig, failure_details, node_env, node_python
from tests.emr_emulator.yarn import Yarn

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
EMR_SPARK_SUBMIT = "/usr/lib/spark/bin/spark-submit"
BOOTSTRAP_TIMEOUT_S = 1800
CONTAINERS_FILE = "containers.json"  # beside a step's logs on the node: its YARN containers and their peak memory


class ClusterNode(threading.Thread):
    """One cluster's primary node: bootstrap actions first, then its steps one at a time (EMR's default)."""

    def __init__(self, cluster, config: NodeConfig, cache: Path):
        super().__init__(name=f"node-{cluster.id}", daemon=True)
        self.cluster, self.config, self.cache = cluster, config, cache
        self.credentials = iam.instance_credentials(cluster)  # the instance profile's role, as on EC2
        self.s3 = boto3.client("s3", endpoint_url=config.endpoint, region_name=config.region, **_keys(self.credentials))
        self.python: Path | None = None
        self.yarn = Yarn(config.root / "yarn" / cluster.id) if config.master == "yarn" else None  # its core nodes

    def run(self) -> None:
        env = node_env(self.config, self.credentials)
        yarn = ThreadPoolExecutor(1).submit(self.yarn.start, env) if self.yarn is not None else None
        try:
            self.bootstrap()
            if yarn is not None:
                yarn.result()  # the core nodes' YARN, started while the primary node bootstraps
        except Exception as error:  # EMR ends the cluster, naming the bootstrap action
            logger.error("cluster %s: bootstrap failed: %s", self.cluster.id, error)
            moto_emr.set_state(self.cluster, "TERMINATED_WITH_ERRORS", f"bootstrap action 1 failed: {error}")
            return
        moto_emr.set_state(self.cluster, "WAITING", "")
        try:
            while not self.cluster.state.startswith("TERMINAT"):
                step = next((s for s in self.cluster.steps if s.state == "PENDING"), None)
                if step is None:
                    time.sleep(0.2)
                    continue
                self.run_step(step)
        finally:
            if self.yarn is not None:
                self.yarn.stop()

    # ---- bootstrap --------------------------------------------------------------------------------------------

    def bootstrap(self) -> None:
        """Write job-flow.json, then run each bootstrap action's script from S3 with its arguments."""
        moto_emr.set_state(self.cluster, "BOOTSTRAPPING")
        for number, action in enumerate(self.cluster.bootstrap_actions, 1):
            script = self._download(action.script_path, self.config.root / "bootstrap" / f"action-{number}.sh")
            args = [self._node_python(a) if i == 2 else a for i, a in enumerate(action.args)]
            node_dir = Path(args[3]) if len(args) > 3 else self.config.node_dir
            info = node_dir / "var" / "lib" / "info" / "job-flow.json"
            info.parent.mkdir(parents=True, exist_ok=True)
            info.write_text(json.dumps({"jobFlowId": self.cluster.id}))
            log = self.config.root / "bootstrap" / f"action-{number}.log"
            with open(log, "wb") as out:
                done = subprocess.run(
                    ["bash", str(script), *args],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=node_env(self.config, self.credentials),
                    cwd=self.config.root,
                    timeout=BOOTSTRAP_TIMEOUT_S,
                )
            if done.returncode != 0:
                tail = log.read_text(errors="replace").strip().splitlines()[-5:]
                raise RuntimeError(f"returned a non-zero return code {done.returncode}: {' | '.join(tail)}")

    def _node_python(self, wanted: str) -> str:
        """The node's Python for the bootstrap's `python` argument: the requested path if it exists, else the
        emulated /usr/bin/python3.11 (a venv of the base interpreter, kept per requirements)."""
        if Path(wanted).exists() and not wanted.startswith("/usr/bin/"):
            return wanted
        digest = hashlib.sha256()
        for name in ("requirements-emr.txt", "requirements-emr-nodeps.txt", "constraints-emr.txt"):
            uri = self.cluster.bootstrap_actions[0].args[0] + "/" + name
            digest.update(self._read(uri) or b"")
        self.python = node_python(self.cache, digest.hexdigest())
        return str(self.python)

    # ---- steps ------------------------------------------------------------------------------------------------

    def run_step(self, step) -> None:
        """Run a step's command as EMR's command-runner does, its logs to S3, its state as its exit says."""
        step.start_date_time = moto_emr.models.utcnow()
        moto_emr.set_state(step, "RUNNING")
        folder = self.config.root / "steps" / step.id
        folder.mkdir(parents=True, exist_ok=True)
        watched, usage = threading.Event(), None
        if self.yarn is not None:  # what its YARN containers use, as the NodeManagers measure it
            usage = ThreadPoolExecutor(1).submit(self.yarn.watch, watched)
        with open(folder / "stdout", "wb") as out, open(folder / "stderr", "wb") as err:
            process = subprocess.Popen(
                self.command(step.args),
                stdout=out,
                stderr=err,
                env=node_env(self.config, self.credentials | self.spark_env()),
                cwd=folder,
                start_new_session=True,
            )
            code = self._wait(process, step)
        watched.set()
        if usage is not None:
            (folder / CONTAINERS_FILE).write_text(json.dumps(usage.result().summary()))
        step.end_date_time = moto_emr.models.utcnow()
        if step.state == "RUNNING" and code != 0:
            logs = {name: ((folder / name).read_text(errors="replace"), self._log_uri(step, name)) for name in STREAMS}
            step.failure_details = failure_details(logs)
            moto_emr.set_state(step, "FAILED", f"exit {code}")
        elif step.state == "RUNNING":
            moto_emr.set_state(step, "COMPLETED")
        elif step.state == "CANCEL_PENDING":
            moto_emr.set_state(step, "CANCELLED", "Cancelled by the user")
        timer = threading.Timer(self.config.log_delay_s, self._upload_logs, (step, folder))
        timer.daemon = True  # EMR copies the logs later; a stopped emulator copies nothing more
        timer.start()

    def _wait(self, process: subprocess.Popen, step) -> int:
        """Wait for the step's process; interrupt it `cancel_delay_s` after CancelSteps (the step CANCEL_PENDING
        until then, as EMR's asynchronous cancel), at once when the cluster ends."""
        cancelled_at = None
        while process.poll() is None:
            if step.state == "CANCEL_PENDING" and cancelled_at is None:
                cancelled_at = time.monotonic()
            ending = self.cluster.state.startswith("TERMINAT") or step.state not in ("RUNNING", "CANCEL_PENDING")
            if ending or (cancelled_at is not None and time.monotonic() - cancelled_at >= self.config.cancel_delay_s):
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    return process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    return process.wait()
            time.sleep(0.2)
        return process.returncode

    def command(self, args: list[str]) -> list[str]:
        """The step's spark-submit with this node's Spark (pyspark's), master, and S3 as EMRFS serves it."""
        if not args or args[0] != EMR_SPARK_SUBMIT:
            raise ValueError(f"the emulated node runs only {EMR_SPARK_SUBMIT} steps, not {args[:1]}")
        import pyspark

        spark_submit = str(Path(pyspark.__file__).parent / "bin" / "spark-submit")
        rest = list(args[1:])
        if self.yarn is not None:  # EMR's own: --master yarn --deploy-mode client, the recipe scaled to this YARN
            rest = with_confs(rest, self.yarn.spark_conf(submitted_confs(rest)))
        elif "--master" in rest:
            rest[rest.index("--master") + 1] = self.config.master
        conf = s3a.spark_conf(self.config.endpoint, self.config.region)
        if self.delta_enabled():  # EMR puts its Delta Lake jars on Spark's classpath: here the cached ones
            conf = with_jars(conf, tables.spark_conf())
        confs = [f"{k}={v}" for k, v in conf.items()]
        return [spark_submit, *[part for conf in confs for part in ("--conf", conf)], *rest]

    def delta_enabled(self) -> bool:
        """Whether the cluster was created with EMR's `delta-defaults` classification saying `delta.enabled`."""
        return any(
            _get(c, "Classification") == "delta-defaults"
            and str((_get(c, "Properties") or {}).get("delta.enabled", "")).lower() == "true"
            for c in self.cluster.configurations
        )

    def spark_env(self) -> dict[str, str]:
        """The cluster's spark-env `export` classification (what EMR writes into spark-env.sh), plus SPARK_HOME."""
        import pyspark

        env = {"SPARK_HOME": str(Path(pyspark.__file__).parent)}
        if self.yarn is not None:
            env["HADOOP_CONF_DIR"] = str(self.yarn.conf_dir)  # where spark-submit finds the ResourceManager
        for classification in self.cluster.configurations:
            if _get(classification, "Classification") != "spark-env":
                continue
            for nested in _get(classification, "Configurations") or []:
                if _get(nested, "Classification") == "export":
                    env.update({k: str(v) for k, v in (_get(nested, "Properties") or {}).items()})
        if self.python is not None:  # the node's /usr/bin/python3.11 is this emulation's venv
            for name in ("PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON"):
                if env.get(name, "").startswith("/usr/bin/"):
                    env[name] = str(self.python)
        return env

    def _log_uri(self, step, name: str = "stderr") -> str | None:
        """s3:// URI of a step log under the cluster's LogUri (<LogUri><cluster>/steps/<step>/<name>.gz)."""
        if not self.cluster.log_uri:
            return None
        return f"{self.cluster.log_uri.replace('s3n://', 's3://')}{self.cluster.id}/steps/{step.id}/{name}.gz"

    def _upload_logs(self, step, folder: Path) -> None:
        """Copy stdout and stderr, gzipped, to <LogUri><cluster>/steps/<step>/ as EMR does."""
        for name in STREAMS:
            if (uri := self._log_uri(step, name)) is not None:
                bucket, key = uris.split(uri)
                try:
                    self.s3.put_object(Bucket=bucket, Key=key, Body=gzip.compress((folder / name).read_bytes()))
                except Exception as error:  # the emulator stopped meanwhile
                    logger.warning("step %s: %s not copied to %s: %s", step.id, name, uri, error)

    # ---- S3 -----------------------------------------------------------------------------------------------------

    def _download(self, uri: str, target: Path) -> Path:
        target.parent.mkdir(parents=True, exist_ok=True)
        bucket, key = uris.split(uri)
        self.s3.download_file(bucket, key, str(target))
        return target

    def _read(self, uri: str) -> bytes | None:
        bucket, key = uris.split(uri)
        try:
            return self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except self.s3.exceptions.NoSuchKey:
            return None


def submitted_confs(args: list[str]) -> dict[str, str]:
    """The `--conf key=value` settings of spark-submit arguments."""
    return dict(v.split("=", 1) for a, v in itertools.pairwise(args) if a == "--conf")


def with_confs(args: list[str], confs: dict[str, str]) -> list[str]:
    """spark-submit arguments with `confs` set: a given `--conf` of the same key replaced, the others prepended."""
    args, added = list(args), []
    for key, value in confs.items():
        at = [i + 1 for i, (a, v) in enumerate(itertools.pairwise(args)) if a == "--conf" and v.startswith(f"{key}=")]
        if at:
            args[at[-1]] = f"{key}={value}"
        else:
            added += ["--conf", f"{key}={value}"]
    return added + args


def _keys(credentials: dict[str, str]) -> dict[str, str]:
    names = {"AWS_ACCESS_KEY_ID": "aws_access_key_id", "AWS_SECRET_ACCESS_KEY": "aws_secret_access_key"}
    return {arg: credentials[var] for var, arg in (names | {"AWS_SESSION_TOKEN": "aws_session_token"}).items()}


def _get(mapping, key: str):
    """A request field as moto kept it (its original or its snake_case name)."""
    if not hasattr(mapping, "get"):
        return None
    snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in key).lstrip("_")
    return mapping.get(key, mapping.get(snake))
