"""The Dagster-side commands: the main command (`python -m fruits_assets`) and the quarantine listing."""
