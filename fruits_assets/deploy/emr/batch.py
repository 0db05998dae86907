"""Several Dagster steps in one EMR step: the run's Spark steps staged together, run one after another on the node.

Each EMR step pays a spark-submit (a JVM, a Python that imports Dagster and rebuilds the job, a SparkSession) before
any work; a batch pays it once. The launching side stages the refs of every Spark step still to run (`plan`), in an
order the run can execute them; on the node `run_steps` executes them one after another in one process, each
step's events written beside it as dagster-aws's own main writes them, then a `done` marker. The launching side
relays each step's events when the run reaches that step, so every asset and check stays its own step in the run.
"""

from __future__ import annotations

import io
import json
import logging
import pickle
from collections.abc import Iterable
from dataclasses import dataclass
from queue import Queue
from threading import Thread

logger = logging.getLogger(__name__)

DONE_FILE = "fruits_step_done.json"  # beside a step's events, once the step ended on the node: {"failed": bool}


@dataclass
class Batch:
    """One EMR step of a run: the Dagster steps it runs, in order."""

    run_id: str
    emr_step_id: str
    step_keys: list[str]


def launcher_steps(step_context, launcher_key: str) -> list:
    """The plan's steps that run through the step launcher, in an order the run can execute them."""
    plan, job = step_context.execution_plan, step_context.job_def
    return [
        step
        for step in plan.get_steps_to_execute_in_topo_order()
        if launcher_key in job.get_node(step.node_handle).definition.required_resource_keys
    ]


def plan(step_context, launcher_key: str, done: Iterable[str], failed: Iterable[str]) -> list[str]:
    """Keys of the steps a new batch runs: this step first, then every Spark step of the run not launched yet,
    leaving out those downstream of a step that failed (the run skips them)."""
    this, done, failed = step_context.step.key, set(done), set(failed)
    steps = launcher_steps(step_context, launcher_key)
    upstream = {step.key: step.get_execution_dependency_keys() for step in step_context.execution_plan.steps}
    keys = [this]
    for step in steps:
        if step.key == this or step.key in done:
            continue
        if _reaches(step.key, failed, upstream):
            continue
        keys.append(step.key)
    return keys


def _reaches(key: str, targets: set[str], upstream: dict[str, set[str]]) -> bool:
    """Whether `key` depends, directly or not, on one of `targets`."""
    seen, todo = set(), list(upstream.get(key, ()))
    while todo:
        current = todo.pop()
        if current in targets:
            return True
        if current not in seen:
            seen.add(current)
            todo.extend(upstream.get(current, ()))
    return False


def refs_for(first_ref, keys: list[str]) -> list:
    """The step run refs of `keys`: the first step's ref (run, config, job, known state) for each step key."""
    return [first_ref._replace(step_key=key) for key in keys]


def step_folder(refs_key: str, step_key: str) -> str:
    """The S3 folder of a step's artifacts, beside the folder of the batch's refs (dagster-aws's layout)."""
    run_folder = refs_key.rsplit("/", 2)[0]
    return f"{run_folder}/{step_key.replace('[', '__').replace(']', '__')}"


def read_done(s3_client, bucket: str, folder: str) -> dict | None:
    """The step's `done` marker ({"failed": bool}), or None while the step has not ended on the node."""
    try:
        body = s3_client.get_object(Bucket=bucket, Key=f"{folder}/{DONE_FILE}")["Body"].read()
    except s3_client.exceptions.NoSuchKey:
        return None
    return json.loads(body)


# ---- on the node ----------------------------------------------------------------------------------------------------


def run_steps(s3_client, bucket: str, refs_key: str, refs: list) -> None:
    """Run each step's ref in turn in this process (one SparkSession, one Dagster instance, so a check sees its
    asset's materialization), its events and `done` marker written to S3; stop after a step that failed."""
    from dagster import DagsterInstance

    instance = DagsterInstance.ephemeral()
    sink: list[Queue] = []
    instance.add_event_listener(refs[0].run_id, lambda event: sink[-1].put(event))
    for ref in refs:
        folder = step_folder(refs_key, ref.step_key)
        sink.append(Queue())
        failed = _run_one(s3_client, bucket, folder, ref, instance, sink[-1])
        logger.info("step %s %s", ref.step_key, "failed" if failed else "done")
        if failed:
            return


def _run_one(s3_client, bucket: str, folder: str, ref, instance, events: Queue) -> bool:
    """Run one step, writing its events as dagster-aws's main does; True when it failed."""
    from dagster._core.execution.plan.external_step import PICKLED_EVENTS_FILE_NAME, run_step_from_ref
    from dagster._serdes import serialize_value
    from dagster_aws.emr.emr_step_main import DONE, event_writing_loop

    def put_events(all_events):
        body = io.BytesIO(pickle.dumps(serialize_value(all_events)))
        s3_client.put_object(Body=body, Bucket=bucket, Key=f"{folder}/{PICKLED_EVENTS_FILE_NAME}")

    writer = Thread(target=event_writing_loop, kwargs={"events_queue": events, "put_events_fn": put_events})
    writer.start()
    failed = True
    try:
        failed = any(event.is_step_failure for event in run_step_from_ref(ref, instance))
    finally:
        events.put(DONE)
        writer.join()
        s3_client.put_object(Bucket=bucket, Key=f"{folder}/{DONE_FILE}", Body=json.dumps({"failed": failed}).encode())
    return failed
