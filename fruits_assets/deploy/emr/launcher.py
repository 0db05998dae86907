"""Launcher wiring of the emr deployment: the EMR step launcher, cluster-side Spark and CNN, which steps need it."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import ClientError
from dagster import AssetChecksDefinition, InitResourceContext, StepLauncher
from dagster._config.pythonic_config import ConfigurableResourceFactory  # public in the docs, not re-exported
from dagster._core.errors import raise_execution_interrupts
from dagster._core.execution.plan.external_step import step_context_to_step_run_ref
from dagster_aws.emr.pyspark_step_launcher import EmrPySparkStepLauncher
from dagster_pyspark import PySparkResource
from pydantic import Field

from fruits_assets.deploy.emr import STEP_LAUNCHER_KEY, batch, failure, step_main
from fruits_assets.deploy.emr.preflight import preflight
from fruits_assets.deploy.emr.settings import DEPLOYMENT_ENV, DeploymentError, EmrSettings
from fruits_assets.deploy.settings import Settings
from fruits_assets.deploy.spark_conf import EMR_SPARK_CONF
from fruits_assets.io.resources import CnnResource
from spark_code.featurize.model_cache import warm_workers_in_background
from spark_code.storage import files

PACKAGE_ROOT = Path(__file__).resolve().parents[3]
PACKAGES = ("fruits_assets", "spark_code")
LIVE_STEP_STATES = ("PENDING", "RUNNING", "CANCEL_PENDING")  # an EMR step in any other state has ended
END_WAIT_POLLS = 20  # how long a run waits for its EMR step to end once it has nothing more to run (polls)


class EmrStepError(RuntimeError):
    """An EMR step ended without running its Dagster step to the end; the message says why and where its logs are."""


def copy_packages(target: Path) -> Path:
    """Copy the importable code (fruits_assets, spark_code: .py files only) into `target`; return it."""
    for package in PACKAGES:
        shutil.copytree(PACKAGE_ROOT / package, target / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return target


class FruitsEmrStepLauncher(EmrPySparkStepLauncher):
    """dagster-aws's EMR launcher, zipping only fruits_assets + spark_code (never the venv) for each step, polling
    every `poll_seconds`, cancelling its EMR step when the run stops first, and naming why a step failed."""

    def __init__(self, *args, poll_seconds: float = 15.0, step_env: dict[str, str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.poll_seconds = poll_seconds
        self.step_env = dict(step_env or {})
        self._batches: dict[str, batch.Batch] = {}  # each run's newest batch EMR step
        self._launched: dict[str, set[str]] = {}  # each run's Dagster steps submitted so far
        self._failed: dict[str, set[str]] = {}  # each run's Dagster steps that failed on the cluster
        self._cancelled: dict[str, str] = {}  # each run's EMR step cancelled outside the run (no new batch then)
        self._s3 = boto3.client("s3", region_name=self.region_name)  # staging: settings, `done` markers

    def _main_file_local_path(self) -> str:
        """The step's main file: ours (the run's settings into the environment), then dagster-aws's."""
        return step_main.__file__

    def launch_step(self, step_context) -> Iterator:
        """Relay this step's events from the run's batch EMR step, submitting a new batch (this step and every Spark
        step of the run not launched yet) when no running batch holds it; cancel the batch if the run stops first."""
        run_id, step_key = step_context.dagster_run.run_id, step_context.step.key
        if run_id in self._cancelled:  # whoever cancelled it wants the run stopped: no new batch
            raise EmrStepError(
                f"{step_key} not run: EMR step {self._cancelled[run_id]} of this run was cancelled outside it "
                "(CancelSteps); run again to redo its Dagster steps"
            )
        current = self._batches.get(run_id)
        if current is None or step_key not in current.step_keys or self._batch_ended_before(current, step_key):
            current = self._submit_batch(step_context)
        try:
            yield from self._relay(current, step_context)
        except EmrStepError:
            raise  # its EMR step has ended: nothing runs on
        except BaseException:  # the run was interrupted or failed here: the batch must not run on alone
            self.cancel(step_context.log, current.emr_step_id)
            raise

    def _submit_batch(self, step_context) -> batch.Batch:
        """Stage the code, the refs of this step and the run's other pending Spark steps, and submit one EMR step."""
        run_id, step_key = step_context.dagster_run.run_id, step_context.step.key
        launched = self._launched.setdefault(run_id, set())
        keys = batch.plan(step_context, STEP_LAUNCHER_KEY, launched, self._failed.setdefault(run_id, set()))
        with tempfile.TemporaryDirectory(prefix="fruits-emr-package-") as folder:
            if self.deploy_local_job_package:
                self.local_job_package_path = str(copy_packages(Path(folder)))
            first = step_context_to_step_run_ref(step_context, self.local_job_package_path)
            self._post_artifacts(step_context.log, batch.refs_for(first, keys), run_id, step_key)
        settings_key = self._artifact_s3_key(run_id, step_key, step_main.SETTINGS_FILE)
        self._s3.put_object(Bucket=self.staging_bucket, Key=settings_key, Body=json.dumps(self.step_env).encode())
        step_def = self._get_emr_step_def(run_id, step_key, step_context.op.name)
        step_def["Name"] = f"fruits {len(keys)} step(s): {', '.join(keys)}"[:256]
        step_id = self.emr_job_runner.add_job_flow_steps(step_context.log, self.cluster_id, [step_def])[0]
        step_context.log.info(f"EMR step {step_id} runs {len(keys)} Dagster step(s): {', '.join(keys)}")
        launched.update(keys)
        self._batches[run_id] = batch.Batch(run_id, step_id, keys)
        return self._batches[run_id]

    def _batch_ended_before(self, current: batch.Batch, step_key: str) -> bool:
        """Whether the batch's EMR step ended without running `step_key` (it stopped after a failed step)."""
        return self._emr_step_ended(current.emr_step_id) and self._done(current, step_key) is None

    def _done(self, current: batch.Batch, step_key: str) -> dict | None:
        """The step's `done` marker from the node (None while it runs or if it never ran)."""
        folder = self._artifact_s3_key(current.run_id, step_key, batch.DONE_FILE).rsplit("/", 1)[0]
        return batch.read_done(self._s3, self.staging_bucket, folder)

    def _relay(self, current: batch.Batch, step_context) -> Iterator:
        """Poll every `poll_seconds` until this step's `done` marker is on S3 (or the EMR step ended), relaying its
        new events through the run's log manager (the main command's terminal lines, the run's event log)."""
        run_id, step_key = step_context.dagster_run.run_id, step_context.step.key
        s3 = boto3.resource("s3", region_name=self.region_name)
        relayed, done, ended = 0, None, False
        while done is None and not ended:
            with raise_execution_interrupts():
                time.sleep(self.poll_seconds)
                done = self._done(current, step_key)
                if done is None:
                    ended = self._emr_step_ended(current.emr_step_id)
                    done = self._done(current, step_key) if ended else None
                records = self.read_events(s3, run_id, step_key)
            for record in records[relayed:]:
                if record.is_dagster_event:
                    step_context.log.log_dagster_event(record.level, record.user_message, record.dagster_event)
                    yield record.dagster_event
                else:
                    step_context.instance.handle_new_event(record)
            relayed = max(relayed, len(records))
        failures = [r for r in records if r.is_dagster_event and r.dagster_event.is_step_failure]
        if done is None or (done["failed"] and not failures):  # the step's Python died: say why from EMR's side
            self._failed[run_id].add(step_key)
            if not self._wait_until_ended(current.emr_step_id):  # its process is exiting: EMR's final state
                step_context.log.warning(f"EMR step {current.emr_step_id} still not ended after {END_WAIT_POLLS} polls")
            if self._step_state(current.emr_step_id) == "CANCELLED":
                self._cancelled[run_id] = current.emr_step_id
            raise EmrStepError(self.explain_failure(current.emr_step_id))
        if done["failed"]:
            self._failed[run_id].add(step_key)
        last = done["failed"] or step_key == current.step_keys[-1]  # the batch runs nothing more: the run ends with it
        if last and not self._wait_until_ended(current.emr_step_id):
            step_context.log.warning(f"EMR step {current.emr_step_id} still runs after its last Dagster step")

    def _wait_until_ended(self, step_id: str) -> bool:
        """Poll, at most `END_WAIT_POLLS` times, until the EMR step reached a final state; whether it did."""
        for _ in range(END_WAIT_POLLS):
            if self._emr_step_ended(step_id):
                return True
            with raise_execution_interrupts():
                time.sleep(self.poll_seconds)
        return self._emr_step_ended(step_id)

    def _step_state(self, step_id: str) -> str:
        """The EMR step's state as DescribeStep names it (CANCEL_PENDING included, which dagster-aws's
        `EmrStepState` does not know: its poller raises a ValueError on it; this launcher never builds one)."""
        return self.emr_job_runner.describe_step(self.cluster_id, step_id)["Step"]["Status"]["State"]

    def _emr_step_ended(self, step_id: str) -> bool:
        """Whether the EMR step reached a final state (COMPLETED, FAILED, CANCELLED, INTERRUPTED); PENDING, RUNNING
        and CANCEL_PENDING are not."""
        return self._step_state(step_id) not in LIVE_STEP_STATES

    def cancel(self, log, step_id: str) -> None:
        """Ask EMR to cancel the step (CancelSteps, asynchronous on EMR) and wait, up to `END_WAIT_POLLS` polls,
        until it reached a final state, so the run lock is released after it; a refusal is logged, never raised over
        the run's own error."""
        try:
            answer = self.emr_job_runner.make_emr_client().cancel_steps(
                ClusterId=self.cluster_id, StepIds=[step_id], StepCancellationOption="SEND_INTERRUPT"
            )
            log.warning(f"cancelled EMR step {step_id}: {answer.get('CancelStepsInfoList')}")
            if not self._wait_until_ended(step_id):
                log.warning(
                    f"EMR step {step_id} is still cancelling after {END_WAIT_POLLS} polls of {self.poll_seconds} s; "
                    "the run ends and releases its lock now: check the step (aws emr describe-step) before the next run"
                )
        except ClientError as error:
            log.error(f"could not cancel EMR step {step_id} on {self.cluster_id}: {error}")

    def explain_failure(self, step_id: str) -> str:
        """Why the step failed: EMR's FailureDetails first, then the tail of its stderr, or where EMR will put it."""
        emr = self.emr_job_runner.make_emr_client()
        return failure.explain(emr, boto3.client("s3", region_name=self.region_name), self.cluster_id, step_id)


class EmrStepLauncher(ConfigurableResourceFactory[StepLauncher]):
    """Runs each Spark step on an EMR cluster with spark-submit; checks cluster, buckets and Python first."""

    emr: EmrSettings = Field(description="Cluster, region, buckets, paths, the nodes' Python (FRUITS_EMR_*, roots).")
    spark_config: dict[str, str] = Field(default_factory=lambda: dict(EMR_SPARK_CONF))
    wait_for_logs: bool = Field(default=False, description="Copy the step's driver logs back (adds minutes).")
    preflight: bool = Field(default=True, description="Check cluster, buckets and Python when the run starts.")

    step_env: dict[str, str] = Field(default_factory=dict, description="The run's FRUITS_* settings, sent to steps.")

    @classmethod
    def for_settings(cls, emr: EmrSettings, settings: Settings) -> EmrStepLauncher:
        """The launcher of these emr settings; each step gets `settings`' FRUITS_* variables (no preflight on a
        node: the launching process did it)."""
        return cls(emr=emr, preflight=not settings.emr_node, step_env=settings.to_env())

    def create_resource(self, context: InitResourceContext) -> StepLauncher:
        settings = self.emr
        if self.preflight:
            preflight(settings)
        return FruitsEmrStepLauncher(
            region_name=settings.region,
            staging_bucket=settings.staging_bucket,
            staging_prefix=settings.staging_prefix,
            wait_for_logs=self.wait_for_logs,
            action_on_failure="CONTINUE",
            cluster_id=settings.cluster_id,
            spark_config=dict(self.spark_config),
            local_job_package_path=str(PACKAGE_ROOT),
            deploy_local_job_package=settings.package_uri is None,
            s3_job_package_path=settings.package_uri,
            poll_seconds=settings.poll_seconds,
            step_env=self.step_env,
        )


class ClusterPySparkResource(PySparkResource):
    """PySparkResource that starts Spark only when a step asks for it (on the cluster, never in the plan process)."""

    def setup_for_execution(self, context: InitResourceContext) -> None:
        """Nothing: the session is created on first use."""

    @property
    def spark_session(self) -> Any:
        """The SparkSession spark-submit set up on the cluster (created on first use)."""
        if self._spark_session is None:
            from dagster_pyspark.resources import spark_session_from_config

            self._spark_session = spark_session_from_config(self.spark_config)
        return self._spark_session


class ClusterCnnResource(CnnResource):
    """CnnResource whose weights file is checked on the cluster nodes (where the bootstrap put it), not locally; the
    launching side names the model by the size of the weights uploaded for the bootstrap."""

    on_node: bool = Field(default=False, description="Whether this process runs on an EMR node (FRUITS_EMR_NODE).")
    weights_uri: str | None = Field(default=None, description="The weights as uploaded for the bootstrap (s3://).")

    def model_key(self) -> str:
        """The nodes' model key: from their weights file on a node, from the uploaded weights' size elsewhere."""
        if self.on_node or self.weights_uri is None:
            return super().model_key()
        return self.model_key_for(files.size(self.weights_uri))

    def setup_for_execution(self, context: InitResourceContext) -> None:
        """On an EMR node: check the weights file, load the model, and build it in the Python workers in the
        background (once per step process), so the batch's listing overlaps it as locally; elsewhere nothing."""
        if self.on_node:
            from pyspark.sql import SparkSession

            super().setup_for_execution(context)
            warm_workers_in_background(SparkSession.builder.getOrCreate, self.cnn_engine(), self.weights_path)


SPARK_RESOURCE_KEYS = frozenset({"pyspark", "models", "tables", "io_manager"})  # resources that touch Spark


def needs_spark(definition) -> bool:
    """Whether an asset or check step touches Spark: a Spark resource, or a DataFrame loaded or stored."""
    node = definition.node_def
    if not isinstance(definition, AssetChecksDefinition):
        return True  # an asset's output is a DataFrame stored by the Parquet IO manager
    data_inputs = [i for i in node.input_defs if not i.dagster_type.is_nothing]
    return bool(SPARK_RESOURCE_KEYS & node.required_resource_keys) or bool(data_inputs)


def missing_step_launcher(definitions: list) -> list[str]:
    """Names of the Spark steps that do not require the `pyspark_step_launcher` resource."""
    return sorted(
        d.node_def.name
        for d in definitions
        if needs_spark(d) and STEP_LAUNCHER_KEY not in d.node_def.required_resource_keys
    )


def require_step_launcher(definitions: list) -> None:
    """Fail unless every Spark step requires the step launcher (else it would run Spark locally against S3)."""
    missing = missing_step_launcher(definitions)
    if missing:
        raise DeploymentError(
            f"{DEPLOYMENT_ENV}=emr: {', '.join(missing)} must require the {STEP_LAUNCHER_KEY!r} resource "
            f'(add required_resource_keys={{"{STEP_LAUNCHER_KEY}"}} to their decorators)'
        )
