"""Reduce: the scaler and the PCA, how k is chosen, and when a saved model is reused."""
