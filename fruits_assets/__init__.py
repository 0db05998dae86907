"""Dagster code location of the Fruits! image-features platform: see fruits_assets.definitions."""
