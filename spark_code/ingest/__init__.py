"""Ingest: list the image roots, the sensor's snapshots and S3 events, and ingest batches (no Spark needed to list)."""
