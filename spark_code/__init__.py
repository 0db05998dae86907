"""Pure PySpark + TensorFlow transforms for the Fruits! feature pipeline (no Dagster imports)."""
