"""Featurize: decode photos and run the CNN over them in Spark (engines, caches, the UDF, triage)."""
