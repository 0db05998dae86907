"""The emulated node's machine: its folder and identity, its Python (EMR's python3.11), its tools and environment,
and what EMR reads from a failed step's log (FailureDetails)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

LOG_DELAY_S = 300.0  # EMR's log push: step logs reach the LogUri within ~5 minutes of being written
CANCEL_DELAY_S = 20.0  # CancelSteps is asynchronous: the step is interrupted some seconds later
PYTHON_ERROR = re.compile(r"^[\w.]+(Error|Exception)(: |$)")
STREAMS = ("stderr", "stdout")  # a step's logs, in the order EMR looks for its failure's cause
SPARK_LOG_LINE = re.compile(r"^\d\d/\d\d/\d\d \d\d:\d\d:\d\d ")


@dataclass(frozen=True)
class NodeConfig:
    """Where the node lives and how it reaches S3: the node folder (/mnt on EMR), the Spark master of its steps, the
    moto endpoint and the identity the node's instance role would give it."""

    root: Path
    endpoint: str
    master: str = "local[2]"
    region: str = "eu-west-3"
    cold: bool = False  # a new node: no pip cache shared with this machine (the venvs are then the node's own too)
    log_delay_s: float = LOG_DELAY_S  # EMR copies a step's logs to the LogUri every few minutes, not when it ends
    cancel_delay_s: float = CANCEL_DELAY_S  # how long a cancelled running step stays CANCEL_PENDING

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


def failure_details(logs: dict[str, tuple[str, str | None]]) -> dict[str, str]:
    """FailureDetails as EMR fills them for a failed step from its logs ({name: (text, S3 URI)}, stderr first): the
    error a log ends with as the reason, the lines that led to it as the message, that log's URI as the log file;
    "Unknown Error" when no log holds an error line."""
    for text, uri in logs.values():
        lines = [line.rstrip() for line in text.splitlines() if line.strip() and not SPARK_LOG_LINE.match(line)]
        errors = [i for i, line in enumerate(lines) if PYTHON_ERROR.match(line.strip()) or "Exception in" in line]
        if errors:
            last = errors[-1]
            message = "\n".join(lines[max(0, last - 9) : last + 1])[:2048]
            return {"Reason": lines[last].strip()[:256], "Message": message} | ({"LogFile": uri} if uri else {})
    return {"Reason": "Unknown Error."}
