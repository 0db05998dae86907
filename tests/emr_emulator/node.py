"""The emulated EMR primary node: runs a cluster's bootstrap actions, then each step's spark-submit, as EMR does."""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import boto3

from fruits_assets.deploy.spark_conf import with_jars
from spark_code.storage import s3a, tables
from tests.emr_emulator import moto_emr

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
EMR_SPARK_SUBMIT = "/usr/lib/spark/bin/spark-submit"
BOOTSTRAP_TIMEOUT_S = 1800


@dataclass(frozen=True)
class NodeConfig:
    """Where the node lives and how it reaches S3: the node folder (/mnt on EMR), the Spark master of its steps, the
    moto endpoint and the identity the node's instance role would give it."""

    root: Path
    endpoint: str
    master: str = "local[2]"
    region: str = "eu-west-3"
    cold: bool = False  # a new node: no pip cache shared with this machine (the venvs are then the node's own too)

    @property
    def node_dir(self) -> Path:
        """The node's /mnt."""
        return self.root / "mnt"

    def aws_env(self) -> dict[str, str]:
        """What the instance role and the node's AWS config give every process on the node."""
        return {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            "AWS_ENDPOINT_URL": self.endpoint,
        }


def base_python() -> str:
    """The interpreter this venv was made from: the emulated node's /usr/bin/python3.11."""
    name = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidate = Path(sys.base_prefix) / "bin" / name
    return str(candidate if candidate.exists() else shutil.which(name) or sys.executable)


def node_python(cache: Path, requirements_digest: str) -> Path:
    """The node's Python: an empty venv of the base interpreter (EMR's python3.11 with its pip), kept per set of
    requirements, so that re-running the bootstrap on it installs nothing new (the bootstrap is idempotent)."""
    folder = cache / f"node-{requirements_digest[:16]}"
    python = folder / "bin" / "python"
    if not python.exists():
        subprocess.run([base_python(), "-m", "venv", str(folder)], check=True)
    return python


def tools(root: Path) -> Path:
    """A folder on the node's PATH with what EMR's Amazon Linux has: `aws` (the CLI) and `sudo` (a pass-through)."""
    folder = root / "bin"
    folder.mkdir(parents=True, exist_ok=True)
    sudo = folder / "sudo"
    sudo.write_text('#!/bin/sh\nexec "$@"\n')
    sudo.chmod(0o755)
    aws = Path(sys.executable).parent / "aws"
    if not aws.exists():
        raise RuntimeError(f"no AWS CLI at {aws}: ./install.sh installs it (awscli, a dev dependency)")
    (folder / "aws").unlink(missing_ok=True)
    (folder / "aws").symlink_to(aws)
    return folder


def node_env(config: NodeConfig, extra: dict[str, str] | None = None) -> dict[str, str]:
    """A node's process environment: a plain PATH with the node's tools, its AWS identity, no project variables."""
    env = {
        "PATH": f"{tools(config.root)}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(config.root / "home"),
        "LANG": "C.UTF-8",
        "TMPDIR": str(config.root / "tmp"),
        **config.aws_env(),
    }
    for name in ("JAVA_HOME", "PIP_CACHE_DIR", "XDG_CACHE_HOME"):
        if os.environ.get(name):
            env[name] = os.environ[name]
    env.setdefault("XDG_CACHE_HOME", str(Path.home() / ".cache"))  # pip's wheel cache, as a warm AMI would have
    if config.cold:  # as a fresh EC2 instance: pip downloads every wheel
        env |= {"XDG_CACHE_HOME": str(config.root / "node-cache"), "PIP_CACHE_DIR": str(config.root / "node-pip")}
    Path(env["HOME"]).mkdir(parents=True, exist_ok=True)
    Path(env["TMPDIR"]).mkdir(parents=True, exist_ok=True)
    return env | (extra or {})


class ClusterNode(threading.Thread):
    """One cluster's primary node: bootstrap actions first, then its steps one at a time (EMR's default)."""

    def __init__(self, cluster, config: NodeConfig, cache: Path):
        super().__init__(name=f"node-{cluster.id}", daemon=True)
        self.cluster, self.config, self.cache = cluster, config, cache
        self.s3 = boto3.client("s3", endpoint_url=config.endpoint, region_name=config.region, **_keys(config))
        self.python: Path | None = None

    def run(self) -> None:
        try:
            self.bootstrap()
        except Exception as error:  # EMR ends the cluster, naming the bootstrap action
            logger.error("cluster %s: bootstrap failed: %s", self.cluster.id, error)
            moto_emr.set_state(self.cluster, "TERMINATED_WITH_ERRORS", f"bootstrap action 1 failed: {error}")
            return
        moto_emr.set_state(self.cluster, "WAITING", "")
        while not self.cluster.state.startswith("TERMINAT"):
            step = next((s for s in self.cluster.steps if s.state == "PENDING"), None)
            if step is None:
                time.sleep(0.2)
                continue
            self.run_step(step)

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
                    env=node_env(self.config),
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
        with open(folder / "stdout", "wb") as out, open(folder / "stderr", "wb") as err:
            process = subprocess.Popen(
                self.command(step.args),
                stdout=out,
                stderr=err,
                env=node_env(self.config, self.spark_env()),
                cwd=folder,
                start_new_session=True,
            )
            code = self._wait(process, step)
        self._upload_logs(step, folder)
        step.end_date_time = moto_emr.models.utcnow()
        if step.state == "RUNNING":
            moto_emr.set_state(step, "COMPLETED" if code == 0 else "FAILED", None if code == 0 else f"exit {code}")
        elif step.state == "CANCEL_PENDING":
            moto_emr.set_state(step, "CANCELLED", "Cancelled by the user")

    def _wait(self, process: subprocess.Popen, step) -> int:
        """Wait for the step's process; kill it when the step is cancelled or the cluster ends."""
        while process.poll() is None:
            if step.state != "RUNNING" or self.cluster.state.startswith("TERMINAT"):
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
        if "--master" in rest:
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

    def _upload_logs(self, step, folder: Path) -> None:
        """Copy stdout and stderr, gzipped, to <LogUri><cluster>/steps/<step>/ as EMR does."""
        if not self.cluster.log_uri:
            return
        bucket, prefix = s3a.split(self.cluster.log_uri.replace("s3n://", "s3://"))
        for name in ("stdout", "stderr"):
            key = f"{prefix}{self.cluster.id}/steps/{step.id}/{name}.gz"
            self.s3.put_object(Bucket=bucket, Key=key, Body=gzip.compress((folder / name).read_bytes()))

    # ---- S3 -----------------------------------------------------------------------------------------------------

    def _download(self, uri: str, target: Path) -> Path:
        target.parent.mkdir(parents=True, exist_ok=True)
        bucket, key = s3a.split(uri)
        self.s3.download_file(bucket, key, str(target))
        return target

    def _read(self, uri: str) -> bytes | None:
        bucket, key = s3a.split(uri)
        try:
            return self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except self.s3.exceptions.NoSuchKey:
            return None


def _keys(config: NodeConfig) -> dict[str, str]:
    env = config.aws_env()
    return {"aws_access_key_id": env["AWS_ACCESS_KEY_ID"], "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"]}


def _get(mapping, key: str):
    """A request field as moto kept it (its original or its snake_case name)."""
    if not hasattr(mapping, "get"):
        return None
    snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in key).lstrip("_")
    return mapping.get(key, mapping.get(snake))
