"""Ingest batches: the dynamic partitions of the image-level assets (one per detected batch of new files)."""

from dagster import DynamicPartitionsDefinition

ingest_batches = DynamicPartitionsDefinition(name="ingest_batches")
