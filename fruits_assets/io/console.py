"""The main command's terminal: a line per step and asset, progress, a summary; everything else in a log file."""

import contextlib
import logging
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

from dagster import AssetCheckSeverity, LoggerDefinition, logger

OUR_LOGGERS = ("fruits_assets", "spark_code")
QUIETER = {  # DEBUG per py4j call, per AWS request would swamp the log file
    name: logging.INFO for name in ("py4j", "matplotlib", "botocore", "boto3", "urllib3", "s3transfer")
}
FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
CONSOLE_FORMAT = "%(asctime)s %(message)s"
FIGURES = (
    "image_count",
    "new",
    "changed",
    "deleted",
    "class_count",
    "featurized",
    "quarantined",
    "cnn_images",
    "row_count",
    "rows_added",
    "rows_removed",
    "refit",
    "refit_due",
    "k",
    "explained_variance",
    "listed",
    "accuracy",
    "macro_f1",
    "raw_accuracy",
)
run_log = logging.getLogger("fruits_assets.run")
events_log = logging.getLogger("dagster_events")  # every Dagster event, to the log file only


class _OursOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.split(".")[0] in OUR_LOGGERS


def _handler(stream, level: int, fmt: str) -> logging.Handler:
    handler = logging.StreamHandler(stream)
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter(fmt, datefmt="%H:%M:%S"))
    return handler


@contextlib.contextmanager
def terminal(log_path: Path, verbose: bool = False) -> Iterator[None]:
    """Log every record at DEBUG to `log_path`, and our own INFO lines (`fruits_assets`, `spark_code`) to the terminal.

    Unless `verbose`, the process's stdout and stderr (file descriptors 1 and 2, which the Spark JVM, TensorFlow
    and warnings write to) go to the log file too; with `verbose` the terminal shows everything, as before.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    with open(log_path, "a", buffering=1, encoding="utf-8") as log_file:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = (os.dup(1), os.dup(2))
        console = open(os.dup(saved[0]), "w", buffering=1, encoding="utf-8")  # noqa: SIM115  the real terminal
        handlers = [_handler(log_file, logging.DEBUG, FILE_FORMAT), _handler(console, logging.INFO, CONSOLE_FORMAT)]
        if verbose:
            handlers[1].setLevel(logging.DEBUG)
        else:
            handlers[1].addFilter(_OursOnly())
            os.dup2(log_file.fileno(), 1)
            os.dup2(log_file.fileno(), 2)
        previous = root.level, {name: logging.getLogger(name).level for name in QUIETER}
        root.setLevel(logging.DEBUG)
        for name, level in QUIETER.items():
            logging.getLogger(name).setLevel(level)
        for handler in handlers:
            root.addHandler(handler)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for handler in handlers:
                root.removeHandler(handler)
            root.setLevel(previous[0])
            for name, level in previous[1].items():
                logging.getLogger(name).setLevel(level)
            console.close()
            for fd in saved:
                os.close(fd)


def figures(metadata: dict) -> str:
    """The key figures of an asset's materialization metadata, e.g. `image_count 24, new 24, class_count 5`."""
    shown = []
    for key in FIGURES:
        value = getattr(metadata.get(key), "value", metadata.get(key))
        if isinstance(value, bool | str) or value is None:
            if isinstance(value, bool):
                shown.append(f"{key} {'yes' if value else 'no'}")
            continue
        shown.append(f"{key} {value:,}" if isinstance(value, int) else f"{key} {value:.4g}")
    return ", ".join(shown)


def root_cause(error) -> str:
    """The first line of the user code's own error in a Dagster `SerializableErrorInfo`: below Dagster's wrappers,
    above the library errors it was raised from (those are in the log file)."""
    if error is None:
        return "no error recorded"
    while error.cause is not None and (error.cls_name or "").startswith("Dagster"):  # Dagster's wrappers, not ours
        error = error.cause
    lines = [line.strip() for line in error.message.strip().splitlines() if line.strip()]
    raised = [line for line in lines if re.match(r"^[\w.]+(Error|Exception): ", line)]
    if lines and error.cls_name == "PythonException" and raised:  # a Spark worker's: its own error is its last line
        return raised[-1]
    return lines[0] if lines else error.cls_name or "unknown error"


class StepLines(logging.Handler):
    """Turns a run's Dagster events into terminal lines: an asset step started, each asset done with its key
    figures, each check's outcome, a failed step. Every event also goes to the `dagster_events` logger (the log file).
    """

    def __init__(self, asset_steps: frozenset[str]):
        super().__init__(logging.DEBUG)
        self.asset_steps = asset_steps
        self.pending: dict[str, list[tuple[str, dict]]] = {}
        self.checks: dict[str, list[tuple[str, str, bool]]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        """Forward `record` to the log file; report step starts, finished assets and checks, failures."""
        events_log.handle(record)
        event = (getattr(record, "dagster_meta", None) or {}).get("dagster_event")
        if event is not None:
            self.on_event(event)

    def on_event(self, event) -> None:
        """One Dagster event (see the class docstring)."""
        kind, step, data = event.event_type_value, event.step_key, event.event_specific_data
        if kind == "STEP_START" and step in self.asset_steps:
            run_log.info("%s: started", step)
        elif kind == "ASSET_MATERIALIZATION":
            materialization = data.materialization
            self.pending.setdefault(step, []).append(
                (materialization.asset_key.to_user_string(), materialization.metadata)
            )
        elif kind == "ASSET_CHECK_EVALUATION":
            outcome = "passed" if data.passed else "WARNING" if _is_warning(data) else "FAILED"
            self.checks.setdefault(step, []).append((data.check_name, data.asset_key.to_user_string(), outcome))
        elif kind == "STEP_SUCCESS":
            self._step_done(step, data.duration_ms / 1000)
        elif kind == "STEP_FAILURE":
            run_log.error("%s: FAILED — %s (traceback in the log file)", step, root_cause(data.error))

    def _step_done(self, step: str, seconds: float) -> None:
        for asset, metadata in self.pending.pop(step, []):
            shown = figures(metadata)
            run_log.info("%s: done in %.1f s%s", asset, seconds, f" — {shown}" if shown else "")
        for check, asset, outcome in self.checks.pop(step, []):
            (run_log.info if outcome == "passed" else run_log.warning)("check %s of %s: %s", check, asset, outcome)


def _is_warning(evaluation) -> bool:
    """A check of WARN severity: its failure is reported, it does not fail the run."""
    return evaluation.severity == AssetCheckSeverity.WARN


def failed_checks(result) -> tuple[list[str], list[str]]:
    """(failed checks that fail the run, failed checks of WARN severity) of an execution result."""
    failing = [e for e in result.get_asset_check_evaluations() if not e.passed]
    warned = sorted(e.check_name for e in failing if _is_warning(e))
    return sorted(e.check_name for e in failing if not _is_warning(e)), warned


def loggers(asset_steps: frozenset[str] = frozenset()) -> dict[str, LoggerDefinition]:
    """Dagster loggers for the main command: terminal lines (a `started` line for the steps in `asset_steps`), every
    event in the log file (and on the terminal too under `terminal(verbose=True)`)."""

    @logger(description="Asset steps, finished assets, checks and failures as terminal lines; every event to a file.")
    def step_lines(_init_context) -> logging.Logger:
        target = logging.getLoggerClass()("fruits_step_lines", level=logging.DEBUG)  # private, not registered
        target.addHandler(StepLines(asset_steps))
        target.propagate = False
        return target

    return {"step_lines": step_lines}


def summary(result, output: str, log_path: Path, ui_command: str) -> list[str]:
    """The closing lines of the main command: images, quarantined (and how to see them), k, accuracy, where to look."""
    metadata = {
        e.asset_key.to_user_string(): e.materialization.metadata for e in result.get_asset_materialization_events()
    }

    def value(asset: str, key: str):
        return getattr(metadata.get(asset, {}).get(key), "value", None)

    checks = result.get_asset_check_evaluations()
    failed, warned = failed_checks(result)
    lines = [f"run {result.run_id}: {'success' if result.success and not failed else 'FAILED'}"]
    lines.append(
        f"images: {value('raw_images', 'image_count')} taken in this batch, {value('cnn_features', 'featurized')} "
        f"featurized; {value('raw_images', 'listed')} listed in the image root"
    )
    lines.append(
        f"quarantined: {value('quarantined_images', 'quarantined')} (see them: .venv/bin/python -m "
        "fruits_assets.cli.quarantine, or the quarantined_images asset in the UI)"
    )
    variance = value("pca_features", "explained_variance")
    lines.append(
        f"PCA: k = {value('pca_features', 'k')}" + (f", explained variance {variance:.4f}" if variance else "")
    )
    accuracy, macro_f1 = value("fruit_classifier", "accuracy"), value("fruit_classifier", "macro_f1")
    if accuracy is not None:
        lines.append(f"classifier: accuracy {accuracy:.4f}, macro-F1 {macro_f1:.4f}")
    lines.append(
        f"checks: {len(checks) - len(failed) - len(warned)}/{len(checks)} passed"
        + (f"; failed: {failed}" if failed else "")
        + (f"; warnings: {warned} (see their descriptions in the UI)" if warned else "")
    )
    lines.append(f"output: {output}")
    lines.append(f"log: {log_path}")
    lines.append(f"UI: {ui_command}, then open http://127.0.0.1:3000/runs/{result.run_id}")
    return lines
