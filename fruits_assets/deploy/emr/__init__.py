"""The emr deployment: its settings, the step launcher, the remote job, the step's main file, preflight."""
