"""Dagster code location of the Fruits! image-features platform."""

from fruits_assets.definitions import build_defs

defs = build_defs()
