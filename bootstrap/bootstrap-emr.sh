#!/usr/bin/env bash
# EMR bootstrap action (every node): the project's pinned packages for python3.11 (never pyspark, never TensorFlow),
# the weights and the ONNX model converted from them at upload (the nodes run it with ONNX Runtime).
#
# Usage (set by bootstrap/emr_cluster.py):
#   bootstrap-emr.sh s3://<staging bucket>/<prefix>/bootstrap <weights file name> [python] [node folder]
# That S3 folder holds requirements-emr.txt, requirements-emr-nodeps.txt, constraints-emr.txt (the launching venv's
# exact versions), weights/<weights file> and onnx/ (the converted model and its sidecar). python defaults to /usr/bin/python3.11, the node folder to /mnt.
# Runs before EMR installs Spark ("bootstrap actions run before Amazon EMR installs the applications"): nothing here
# may import pyspark, or anything that imports it (dagster_pyspark does).
# Idempotent: re-running it installs nothing new and copies nothing already there.
set -euo pipefail

usage="usage: bootstrap-emr.sh s3://bucket/prefix/bootstrap WEIGHTS_FILE_NAME [PYTHON] [NODE_DIR]"
ARTIFACTS="${1:?$usage}"
WEIGHTS_NAME="${2:?$usage}"
PYTHON="${3:-/usr/bin/python3.11}"
NODE_DIR="${4:-/mnt}"
WEIGHTS_DIR="$NODE_DIR/fruits/weights"
ONNX_DIR="$NODE_DIR/fruits/onnx"
JOB_FLOW="$NODE_DIR/var/lib/info/job-flow.json"
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
  local constraints=()
  aws s3 cp --quiet "$ARTIFACTS/requirements-emr.txt" "$WORK/"
  aws s3 cp --quiet "$ARTIFACTS/requirements-emr-nodeps.txt" "$WORK/"
  if aws s3 cp --quiet "$ARTIFACTS/constraints-emr.txt" "$WORK/" 2>/dev/null; then
    constraints=(-c "$WORK/constraints-emr.txt")  # every transitive version as in the launching venv
  fi
  log "pip install -r requirements-emr.txt ${constraints[*]:+(versions as in the launching venv)}"
  sudo "$PYTHON" -m pip install --quiet --disable-pip-version-check -r "$WORK/requirements-emr.txt" "${constraints[@]}"
  log "pip install --no-deps -r requirements-emr-nodeps.txt"
  sudo "$PYTHON" -m pip install --quiet --disable-pip-version-check --no-deps -r "$WORK/requirements-emr-nodeps.txt"
  if "$PYTHON" -m pip show --quiet pyspark >/dev/null 2>&1; then
    log "ERROR: a pip pyspark is installed for $PYTHON; it would shadow EMR's Spark. Remove it: pip uninstall pyspark"
    exit 1
  fi
  # Import what can be imported before Spark exists; dagster-pyspark imports pyspark, so it is only looked up.
  "$PYTHON" - <<'PY'
import importlib.metadata
import dagster, dagster_aws, onnxruntime, openvino, pillow_heif, PIL, pyarrow, scipy  # noqa: F401
for name in ("dagster-pyspark", "dagster-spark"):
    importlib.metadata.version(name)  # installed (--no-deps), imported once spark-submit provides pyspark
print("imports ok")
PY
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

copy_onnx() {
  # The model converted once by `emr_cluster.py upload` (TensorFlow stays on the launching side); its sidecar holds
  # the weights' digest and the model's SHA-256, which the featurizer checks before use.
  sudo mkdir -p "$ONNX_DIR"
  sudo chown "$(id -u):$(id -g)" "$ONNX_DIR"
  aws s3 cp --quiet --recursive "$ARTIFACTS/onnx/" "$ONNX_DIR/"
  log "ONNX model in $ONNX_DIR: $(ls "$ONNX_DIR" | tr '\n' ' ')"
}

record_node() {
  # What this node runs, for the launching side's preflight: its Python and every installed version.
  local cluster
  cluster="$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["jobFlowId"])' "$JOB_FLOW" 2>/dev/null || true)"
  if [ -z "$cluster" ]; then
    log "no cluster id in $JOB_FLOW: node record skipped"
    return
  fi
  "$PYTHON" - "$WORK/node.json" <<'PY'
import importlib.metadata, json, platform, sys
packages = {d.metadata["Name"].lower(): d.version for d in importlib.metadata.distributions()}
json.dump({"python": platform.python_version(), "packages": packages}, open(sys.argv[1], "w"), sort_keys=True)
PY
  aws s3 cp --quiet "$WORK/node.json" "$ARTIFACTS/clusters/$cluster/node.json"
  log "recorded this node in $ARTIFACTS/clusters/$cluster/node.json"
}

log "start (artifacts: $ARTIFACTS, python: $PYTHON, node folder: $NODE_DIR)"
ensure_python
install_packages
copy_weights
copy_onnx
record_node
log "done"
