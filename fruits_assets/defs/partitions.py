"""Ingest batches: the dynamic partitions of the image-level assets (one per detected batch of new files)."""

from dagster import DynamicPartitionsDefinition

GROUP = "fruits"  # the asset group of every asset
ingest_batches = DynamicPartitionsDefinition(name="ingest_batches")
CHANGES_TAG = "fruits/changes"  # a sensor run's tag: where the sensor stored the batch it found (raw_images reads it)
