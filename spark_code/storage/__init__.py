"""Storage: versioned tables and models, the run lock, the quality measures, S3 for Spark."""
