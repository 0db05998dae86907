"""Classify: the fruit classifier, its softmax fits, open-set rejection and the serving engine."""
