"""Dagster definitions by stage: each module holds its assets and their checks; then jobs, sensor, schedule."""
