"""moto's EMR made to keep EMR's life cycle: clusters wait for their node's bootstrap, steps wait for the node,
CancelSteps exists (asynchronous: a running step is CANCEL_PENDING until its node interrupts it), and a failed step
carries FailureDetails. Applied inside the emulator's own process, where the moto server's backends live."""

from __future__ import annotations

import threading

from moto.core.responses import ActionResult
from moto.emr import models, responses
from moto.emr.exceptions import ValidationException
from moto.emr.models import emr_backends

from tests.emr_emulator import iam

_lock = threading.Lock()
_new_clusters: list = []


def _start_on_node(cluster) -> None:
    """run_job_flow: EMR checks the roles, then answers at once with a STARTING cluster; the node bootstraps it
    later."""
    iam.check_roles(cluster)
    cluster.state = "STARTING"
    with _lock:
        _new_clusters.append(cluster)


def _queue_steps(cluster, steps: list[dict]) -> list:
    """AddJobFlowSteps: every step waits, PENDING, until the node runs it (one at a time, in order); an ended
    cluster refuses steps, as EMR does."""
    if getattr(cluster, "state", "").startswith("TERMINAT"):  # (moto adds a new cluster's steps before its state)
        raise ValidationException("A job flow that is shutting down, terminated, or finished may not be modified.")
    added = [models.Step(state="PENDING", **step) for step in steps]
    cluster.steps.extend(added)
    return added


def _terminate(cluster) -> None:
    cluster.state = "TERMINATED"
    cluster.end_datetime = models.utcnow()
    for step in cluster.steps:
        if step.state in ("PENDING", "RUNNING", "CANCEL_PENDING"):
            step.state = "CANCELLED" if step.state == "PENDING" else "INTERRUPTED"
            step.last_state_change_reason = "Job terminated"


def _cancel_steps(self) -> ActionResult:
    """CancelSteps: a pending step is cancelled at once; a running one is interrupted by its node."""
    cluster = self.backend.describe_cluster(self._get_param("ClusterId"))
    wanted = set(self._get_param("StepIds", []))
    answers = []
    for step in cluster.steps:
        if step.id not in wanted:
            continue
        if step.state == "PENDING":
            step.state = "CANCELLED"
        elif step.state == "RUNNING":
            step.state = "CANCEL_PENDING"
        status = "SUBMITTED" if step.state in ("CANCELLED", "CANCEL_PENDING") else "FAILED"
        answers.append({"StepId": step.id, "Status": status, "Reason": f"step is {step.state}"})
    return ActionResult({"CancelStepsInfoList": answers})


_step_status = models.Step.status.fget


def _status_with_failure(step) -> dict:
    """A step's Status as EMR answers it: FailureDetails (Reason, Message, LogFile) once the step failed."""
    status = _step_status(step)
    details = getattr(step, "failure_details", None)
    if details:
        status["FailureDetails"] = details
    return status


def install() -> None:
    """Patch moto's EMR models (in this process only)."""
    models.Step.status = property(_status_with_failure)
    iam.install()
    models.Cluster.run_bootstrap_actions = _start_on_node
    models.Cluster.add_steps = lambda cluster, steps: _queue_steps(cluster, steps)
    models.Cluster.terminate = _terminate
    responses.ElasticMapReduceResponse.cancel_steps = _cancel_steps


def take_new_clusters() -> list:
    """Clusters created since the last call."""
    with _lock:
        taken = list(_new_clusters)
        _new_clusters.clear()
    return taken


def all_clusters() -> list:
    """Every cluster of every account and region of this moto server."""
    return [
        cluster
        for account in emr_backends.values()
        for backend in account.values()
        for cluster in backend.clusters.values()
    ]


def set_state(target, state: str, reason: str | None = None) -> None:
    """Set a cluster's or step's state (and its reason), as EMR's control plane would."""
    target.state = state
    if reason is not None:
        target.last_state_change_reason = reason
