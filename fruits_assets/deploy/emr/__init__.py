"""The emr deployment: its settings, the step launcher, the remote job, the step's main file, preflight."""

STEP_LAUNCHER_KEY = "pyspark_step_launcher"  # the resource every Spark step takes: EMR's launcher, or none locally
