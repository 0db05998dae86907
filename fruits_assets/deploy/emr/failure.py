"""Why an EMR step ended without running its Dagster steps: EMR's FailureDetails first, then its logs on S3."""

from __future__ import annotations

import gzip
import logging
import re

from botocore.exceptions import ClientError

logger = logging.getLogger(__name__)

STDERR_TAIL_LINES = 40
UNKNOWN = "Unknown Error"  # EMR's FailureDetails.Reason when it found no root cause
SPARK_LOG_LINE = re.compile(r"^\d\d/\d\d/\d\d \d\d:\d\d:\d\d ")  # log4j's lines, around the step's own output
PYTHON_ERROR = re.compile(r"^[\w.]+(Error|Exception)(: |$)")
CANCELLED_ELSEWHERE = (
    "it was cancelled outside this run (CancelSteps: the EMR console, `aws emr cancel-steps` or another client) "
    "while the run waited for it; its Dagster steps did not finish: run again to redo them"
)


def step_logs(cluster: dict, cluster_id: str, step_id: str) -> tuple[str, str] | None:
    """(bucket, folder) where EMR copies the step's logs under the cluster's LogUri; None without a LogUri."""
    log_uri = cluster.get("LogUri")
    if not log_uri or log_uri == "None":
        return None
    bucket, _, prefix = re.sub(r"^s3n?://", "", log_uri).partition("/")
    return bucket, f"{prefix.rstrip('/') + '/' if prefix else ''}{cluster_id}/steps/{step_id}"


def explain(emr, s3, cluster_id: str, step_id: str) -> str:
    """Why the step ended, in its first line (the cluster's end, EMR's FailureDetails, or the error its stderr ends
    with), then EMR's failure message and the tail of its stderr, or where EMR will copy its logs."""
    status = emr.describe_step(ClusterId=cluster_id, StepId=step_id)["Step"]["Status"]
    cluster = emr.describe_cluster(ClusterId=cluster_id)["Cluster"]
    details = status.get("FailureDetails") or {}
    where = step_logs(cluster, cluster_id, step_id)
    logs = [text for name in ("stderr", "stdout") if where and (text := _log_text(s3, where, name))]
    error, tail = stderr_summary("\n".join(logs)) if logs else (None, None)
    headline = f"EMR step {step_id} on {cluster_id} {status['State']} {_reason(status)}".rstrip()
    state = cluster["Status"]["State"]
    if state.startswith("TERMINAT"):
        headline += (
            f": cluster {cluster_id} is {state} {_reason(cluster['Status'])}; start a new one "
            "(bootstrap/emr_cluster.py create) and set FRUITS_EMR_CLUSTER_ID"
        ).replace("  ", " ")
    elif status["State"] == "CANCELLED":
        headline += f": {CANCELLED_ELSEWHERE}"
    elif details.get("Reason") and not details["Reason"].startswith(UNKNOWN):
        headline += f": {details['Reason']}"
    elif error:
        headline += f": {error}"
    lines = [headline]
    if details.get("Message"):
        lines.append(f"EMR's failure details ({details.get('LogFile') or 'no log file named'}):")
        lines.append(details["Message"].rstrip())
    if where is None:
        lines.append(f"cluster {cluster_id} has no LogUri: its step logs stay on the primary node")
    elif logs:
        lines.append(f"last lines of its stderr and stdout (s3://{where[0]}/{where[1]}/):\n{tail}")
    else:
        lines.append(
            f"its logs are not on S3 yet: EMR copies them to s3://{where[0]}/{where[1]}/ every few minutes "
            "(stderr.gz, stdout.gz)"
        )
    return "\n".join(lines)


def _reason(status: dict) -> str:
    message = (status.get("StateChangeReason") or {}).get("Message")
    return f"({message})" if message else ""


def stderr_summary(text: str) -> tuple[str, str]:
    """(the error the step's stderr ends with, its last lines), Spark's log4j lines left out."""
    lines = [line.rstrip() for line in text.splitlines() if line.strip() and not SPARK_LOG_LINE.match(line)]
    errors = [line.strip() for line in lines if PYTHON_ERROR.match(line.strip())]
    return (errors or lines or ["no output"])[-1][:300], "\n".join(lines[-STDERR_TAIL_LINES:])


def _log_text(s3, where: tuple[str, str], name: str) -> str | None:
    """A gzipped step log on S3 as text, or None while EMR has not copied it there."""
    try:
        body = s3.get_object(Bucket=where[0], Key=f"{where[1]}/{name}.gz")["Body"].read()
    except ClientError as error:
        logger.debug("no %s log yet at s3://%s/%s: %s", name, where[0], where[1], error)
        return None
    return gzip.decompress(body).decode("utf-8", "replace")
