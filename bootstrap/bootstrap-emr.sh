#!/usr/bin/env bash
# EMR bootstrap action (every node): the project's pinned packages for python3.11 (never pyspark), and the weights.
#
# Usage (set by bootstrap/emr_cluster.py): bootstrap-emr.sh s3://<staging bucket>/<prefix>/bootstrap <weights file name>
# That folder holds requirements-emr.txt, requirements-emr-nodeps.txt and weights/<weights file>.
# Idempotent: re-running it installs nothing new and copies nothing already there.
set -euo pipefail

ARTIFACTS="${1:?usage: bootstrap-emr.sh s3://bucket/prefix/bootstrap WEIGHTS_FILE_NAME}"
PYTHON="${FRUITS_PYTHON:-/usr/bin/python3.11}"
WEIGHTS_NAME="${2:?usage: bootstrap-emr.sh s3://bucket/prefix/bootstrap WEIGHTS_FILE_NAME}"
WEIGHTS_DIR="/mnt/fruits/weights"
WORK="$(mktemp -d /tmp/fruits-bootstrap.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT

log() { echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) fruits-bootstrap: $*"; }

ensure_python() {
  if ! command -v "$PYTHON" >/dev/null 2>&1; then
    log "installing python3.11 (not found at $PYTHON)"
    sudo dnf install -y -q python3.11 python3.11-pip
  fi
  if ! "$PYTHON" -m pip --version >/dev/null 2>&1; then
    log "installing pip for $PYTHON"
    sudo dnf install -y -q python3.11-pip || sudo "$PYTHON" -m ensurepip
  fi
  log "python: $("$PYTHON" --version 2>&1)"
}

install_packages() {
  aws s3 cp --quiet "$ARTIFACTS/requirements-emr.txt" "$WORK/"
  aws s3 cp --quiet "$ARTIFACTS/requirements-emr-nodeps.txt" "$WORK/"
  log "pip install -r requirements-emr.txt"
  sudo "$PYTHON" -m pip install --quiet --disable-pip-version-check -r "$WORK/requirements-emr.txt"
  log "pip install --no-deps -r requirements-emr-nodeps.txt"
  sudo "$PYTHON" -m pip install --quiet --disable-pip-version-check --no-deps -r "$WORK/requirements-emr-nodeps.txt"
  if "$PYTHON" -m pip show --quiet pyspark >/dev/null 2>&1; then
    log "ERROR: a pip pyspark is installed for $PYTHON; it would shadow EMR's Spark. Remove it: pip uninstall pyspark"
    exit 1
  fi
  "$PYTHON" -c "import dagster, dagster_aws, dagster_pyspark, tensorflow, onnxruntime, tf2onnx, pillow_heif, PIL, pyarrow; print('imports ok')"
}

copy_weights() {
  sudo mkdir -p "$WEIGHTS_DIR"
  sudo chown "$(id -u):$(id -g)" "$WEIGHTS_DIR"
  local target="$WEIGHTS_DIR/$WEIGHTS_NAME"
  local size
  size="$(aws s3 ls "$ARTIFACTS/weights/$WEIGHTS_NAME" | awk '{print $3}' || true)"
  if [ -n "$size" ] && [ -f "$target" ] && [ "$(stat -c %s "$target")" = "$size" ]; then
    log "weights already at $target ($size bytes)"
    return
  fi
  log "copying weights to $target"
  aws s3 cp --quiet "$ARTIFACTS/weights/$WEIGHTS_NAME" "$target.partial"
  mv "$target.partial" "$target"
  chmod a+r "$target"
}

log "start (artifacts: $ARTIFACTS)"
ensure_python
install_packages
copy_weights
log "done"
