"""A shell on the emulated EMR for the tests: the emulator's exports, commands run as a user runs the README's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.moto_server import set_auth

REPO = Path(__file__).resolve().parents[1]
BUCKET = "fruits-emu"
PREFIX = "fruits"
CLASSES = ("Apple Braeburn", "Banana", "Cherry 1")
IMAGES = f"s3://{BUCKET}/{PREFIX}/images"
OUTPUT = f"s3://{BUCKET}/{PREFIX}/output"
BATCH_ASSETS = ["raw_images", "cnn_features", "quarantined_images"]  # a batch's own assets (and their checks)
LOG_DELAY_S = 5.0  # EMR's minutes to copy a step's logs, as seconds
MASTER = "yarn"  # each step's Spark: EMR's (--master yarn --deploy-mode client) on the emulator's YARN
CANCEL_DELAY_S = 3.0  # a cancelled step stays CANCEL_PENDING for 3 polls of the emulator's 1 s


@dataclass
class EmrShell:
    """The emulator process and the environment a user's shell would have after the README's exports."""

    process: subprocess.Popen
    exports: dict[str, str]
    home: Path
    env: dict[str, str] = field(default_factory=dict)
    cold: bool = False  # started with --cold: the node's venvs are its own

    def client(self, service: str, **identity: str):
        """A boto3 client of the emulated AWS, with the emulator's identity (or `identity`: AWS_ACCESS_KEY_ID...)."""
        import boto3

        names = {"endpoint_url": "AWS_ENDPOINT_URL", "aws_access_key_id": "AWS_ACCESS_KEY_ID"}
        names |= {"aws_secret_access_key": "AWS_SECRET_ACCESS_KEY", "region_name": "AWS_DEFAULT_REGION"}
        return boto3.client(service, **{arg: (self.exports | identity)[var] for arg, var in names.items()})

    def instance(self):
        """The Dagster instance the shell's commands record their runs in."""
        from dagster import DagsterInstance

        return DagsterInstance.from_config(str(self.home))

    def node_python(self) -> Path:
        """The emulated node's Python, as the emulator picks it: the venv kept for the requirements uploaded to the
        bootstrap prefix (the cache may hold venvs of other requirements, from other checkouts)."""
        import hashlib

        from tests.emr_emulator import CACHE
        from tests.emr_emulator.host import node_python

        s3, digest = self.client("s3"), hashlib.sha256()
        for name in ("requirements-emr.txt", "requirements-emr-nodeps.txt", "constraints-emr.txt"):
            try:
                digest.update(s3.get_object(Bucket=BUCKET, Key=f"{PREFIX}/staging/bootstrap/{name}")["Body"].read())
            except s3.exceptions.NoSuchKey:
                continue
        return node_python(self.home.parent / "node" / "node-venvs" if self.cold else CACHE, digest.hexdigest())

    def step_containers(self, step_id: str) -> dict:
        """What the node's YARN containers of an EMR step used ({containers, peak_container_mib}); {} without YARN."""
        path = self.home.parent / "node" / "steps" / step_id / "containers.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def output_keys(self, prefix: str) -> list[str]:
        """The keys of the output on S3 that start with `prefix`."""
        listed = self.client("s3").list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/output/{prefix}")
        return sorted(o["Key"] for o in listed.get("Contents", []))

    def committed(self, prefix: str) -> list[str]:
        """The `_COMMITTED` markers of the output's versions under `prefix`."""
        return [key for key in self.output_keys(prefix) if key.endswith("/_COMMITTED")]

    def table(self, name: str, version: int | None = None) -> list[dict]:
        """The current rows (or those of `version`) of the output's Delta table `name` on S3, read with delta-rs
        (what Spark wrote through S3A), as a data person outside the cluster reads it."""
        from deltalake import DeltaTable

        options = {
            "AWS_ENDPOINT_URL": self.exports["AWS_ENDPOINT_URL"],
            "AWS_ACCESS_KEY_ID": self.exports["AWS_ACCESS_KEY_ID"],
            "AWS_SECRET_ACCESS_KEY": self.exports["AWS_SECRET_ACCESS_KEY"],
            "AWS_REGION": self.exports["AWS_DEFAULT_REGION"],
            "AWS_ALLOW_HTTP": "true",
        }
        table = DeltaTable(f"s3://{BUCKET}/{PREFIX}/output/{name}", version=version, storage_options=options)
        return table.to_pyarrow_table().to_pylist()

    @classmethod
    def start(cls, root: Path, cold: bool = False, master: str = MASTER) -> EmrShell:
        """Start `python -m tests.emr_emulator` (`--cold`: nodes share no pip cache or venv with this machine) and
        read what it says to export."""
        root.mkdir(parents=True, exist_ok=True)
        log = open(root / "emulator.log", "wb")  # noqa: SIM115  closed with the process
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "tests.emr_emulator", "--root", str(root / "node")),
                *(["--cold"] if cold else []),
                *("--log-delay", str(LOG_DELAY_S), "--cancel-delay", str(CANCEL_DELAY_S), "--master", master),
            ],
            stdout=subprocess.PIPE,
            stderr=log,
            cwd=REPO,
            text=True,
        )
        exports = {}
        for line in process.stdout:
            if line.startswith("# emulated EMR ready"):
                break
            name, _, value = line.removeprefix("export ").strip().partition("=")
            exports[name] = value.strip("'")
        if process.poll() is not None or "AWS_ENDPOINT_URL" not in exports:
            raise RuntimeError(f"the EMR emulator did not start: see {root / 'emulator.log'}")
        shell = cls(process, exports, root / "dagster", cold=cold)
        shell.home.mkdir(exist_ok=True)
        base = {k: v for k, v in os.environ.items() if not k.startswith(("FRUITS_", "AWS_", "DAGSTER_"))}
        shell.env = (
            base
            | exports
            | {
                "DAGSTER_HOME": str(shell.home),
                "FRUITS_EMR_STAGING_BUCKET": BUCKET,
                "FRUITS_IMAGE_ROOT": f"s3://{BUCKET}/{PREFIX}/images",
                "FRUITS_OUTPUT_URI": f"s3://{BUCKET}/{PREFIX}/output",
                "FRUITS_TRAINING_ROOT": f"s3://{BUCKET}/{PREFIX}/training",
            }
        )
        return shell

    def run(self, *command: str, check: bool = True, timeout: float = 1200, **env: str) -> subprocess.CompletedProcess:
        """Run a command of the README in the repository root with this shell's environment (plus `env`)."""
        done = subprocess.run(
            command, cwd=REPO, env=self.env | env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"{' '.join(command)} exited {done.returncode}:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
            )
        return done

    def python(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        """`.venv/bin/python ARGS` (this interpreter)."""
        return self.run(sys.executable, *args, **kwargs)

    def aws(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        """The AWS CLI, as the README uses it."""
        return self.run(str(Path(sys.executable).parent / "aws"), *args, **kwargs)

    def stop(self) -> None:
        """Ctrl-C the emulator (it terminates its clusters) and wait for it."""
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()


def wait_for(predicate, timeout_s: float = 300, every_s: float = 0.5):
    """Poll `predicate` until it returns something truthy; return it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every_s)
    raise TimeoutError(f"still false after {timeout_s} s: {predicate}")


def step_ids(shell: EmrShell, cluster: str) -> set[str]:
    """The ids of the cluster's EMR steps."""
    return {s["Id"] for s in shell.client("emr").list_steps(ClusterId=cluster)["Steps"]}


def new_steps(shell: EmrShell, cluster: str, before: set[str]) -> list[dict]:
    """The cluster's EMR steps not in `before` (newest first, as ListSteps)."""
    return [s for s in shell.client("emr").list_steps(ClusterId=cluster)["Steps"] if s["Id"] not in before]


@contextmanager
def iam_enforced(shell):
    """Every call to the emulated AWS checked against IAM: the runner's policy, the nodes' instance profile."""
    set_auth(shell.exports["AWS_ENDPOINT_URL"], 0)
    try:
        yield
    finally:
        set_auth(shell.exports["AWS_ENDPOINT_URL"], float("inf"))
