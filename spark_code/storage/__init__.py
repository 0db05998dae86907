"""Storage: Delta tables (through Spark and without it), versioned models, the run lock, quality measures, jars."""
