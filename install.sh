#!/usr/bin/env bash
# Set-up on Debian/Ubuntu: the Java runtime (Spark) and Chromium (the UI test) when missing, then the project in .venv.
# Idempotent: what is present is skipped, pinned packages are never upgraded. Prints what it does and how long it took.
set -euo pipefail
cd "$(dirname "$0")"
started=$SECONDS
say() { echo "install.sh: $*"; }

# --- Python 3.11 or 3.12 (PYTHON=... picks one) --------------------------------------------------------------
python_ok() { "$1" -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 12))' 2>/dev/null; }
PYTHON=${PYTHON:-}
if [ -z "$PYTHON" ]; then
  for candidate in python3.11 python3.12 python3; do
    if command -v "$candidate" >/dev/null 2>&1 && python_ok "$candidate"; then PYTHON=$candidate; break; fi
  done
fi
if [ -z "$PYTHON" ] || ! python_ok "$PYTHON"; then
  say "no Python 3.11 or 3.12 found (tried python3.11, python3.12, python3); install one, or set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
py_version=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')

# --- System packages, only the missing ones (apt-get) --------------------------------------------------------
packages=()
# Spark's JVM (Spark 3.5: Java 8/11/17/21), chosen below; a JDK, since the emulated EMR's YARN launcher
# (tests/emr_emulator/YarnNode.java) runs from source, which needs the jdk.compiler module a JRE lacks.
java --list-modules 2>/dev/null | grep -q '^jdk.compiler' || packages+=(JAVA)
command -v chromium >/dev/null 2>&1 || packages+=(chromium)              # tests/dagster/test_ui.py drives it headless
[ -d .venv ] || "$PYTHON" -c 'import ensurepip' 2>/dev/null || packages+=("python${py_version}-venv")  # python -m venv
if [ ${#packages[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  say "installing with apt-get: ${packages[*]/#JAVA/a Java JDK} (Java for Spark, Chromium for the UI test, venv)"
  $sudo apt-get update -q
  # Java 17 where the distribution has it (Debian 12, Ubuntu 22.04/24.04), else its default JDK (Debian 13: 21).
  java=openjdk-17-jdk-headless
  apt-cache show "$java" >/dev/null 2>&1 || java=default-jdk-headless
  packages=("${packages[@]/#JAVA/$java}")
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${packages[@]}"
else
  say "java and chromium present: nothing to install with apt-get"
fi
say "$(java -version 2>&1 | head -1); $(chromium --version 2>/dev/null || echo 'chromium: not found')"

# --- The project and its pinned dependencies in .venv (skipped when pyproject.toml is unchanged) ---------------
stamp=.venv/.installed-pyproject.sha256
wanted=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ -x .venv/bin/python ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
  say ".venv is up to date with pyproject.toml: nothing to install with pip"
else
  [ -x .venv/bin/python ] || { say "creating .venv with $PYTHON (Python $py_version)"; "$PYTHON" -m venv .venv; }
  say "installing the project and its pinned dependencies into .venv (a few minutes the first time)"
  .venv/bin/pip install -q --disable-pip-version-check -e '.[dev]'
  echo "$wanted" >"$stamp"
fi

# --- S3 for Spark outside EMR: hadoop-aws at exactly pyspark's Hadoop version, fetched once with Spark's Ivy ---
# (cached under ~/.cache/fruits/ivy; used only when an image root or output is s3://, and by the emulated EMR)
say "$(.venv/bin/python -m spark_code.storage.s3a | head -1 | xargs -r dirname | xargs -r printf 'hadoop-aws jars in %s')"

# --- Delta Lake for Spark: delta-spark's jars at the version pyspark 3.5 pairs with, fetched once with Spark's Ivy ---
# (same cache; every local session puts them on its classpath, the emulated EMR node too: nothing fetched at run time)
say "$(.venv/bin/python -m spark_code.storage.tables | head -1 | xargs -r dirname | xargs -r printf 'Delta Lake jars in %s')"

# --- The emulated EMR's YARN (tests): Hadoop's own ResourceManager and NodeManagers (MiniYARNCluster) at pyspark's
# Hadoop version, fetched once with Spark's Ivy (~/.cache/fruits/yarn, apart from Spark's jars; nothing at run time)
say "$(.venv/bin/python -m tests.emr_emulator.yarn | tail -1 | xargs -r printf 'YARN jars (the emulated EMR) in %s')"

# --- The Spark JVM's class archive (AppCDS): Spark's classes loaded once here, mapped at each start ---------------
# (~/.cache/fruits/jvm; local sessions start ~1 s sooner and run their first jobs ~2 s sooner; absent: Spark as usual)
archive=$(.venv/bin/python -m fruits_assets.deploy.class_archive 2>/dev/null | tail -1) || true
say "class archive of the Spark JVM: ${archive:-none made (Spark starts without it)}"

# --- The project-local Dagster instance: the main command, dagster dev and the daemon share it ----------------
mkdir -p .dagster
if ! grep -qs '^DAGSTER_HOME=' .env; then
  # dagster dev loads ./.env; ${DAGSTER_HOME:-…} keeps an exported DAGSTER_HOME in charge.
  echo "DAGSTER_HOME=\${DAGSTER_HOME:-$PWD/.dagster}" >>.env
  say "wrote DAGSTER_HOME to .env: dagster dev shows the runs of python -m fruits_assets (instance in .dagster/)"
fi

say "done in $((SECONDS - started)) s"
