"""Dagster definitions by stage: each module holds its assets and their checks; then jobs, sensor, schedule.

The stages in flow order: ingest (raw_images) → featurize (cnn_features + quarantined_images, training_features)
→ reduction (scaled_features, pca_features) → classify (fruit_classifier); automation holds the jobs, the sensor and
the schedule. ASSETS and CHECKS (FEATURE_*: the feature tables alone) list them for the Definitions and for each
deployment's resources.
"""

from fruits_assets.defs.classify import accuracy_above_floor, fruit_classifier, pca_costs_little_accuracy
from fruits_assets.defs.featurize import (
    cnn_features,
    counts_reconcile,
    features_are_finite_1280,
    one_cnn_engine,
    training_features,
)
from fruits_assets.defs.ingest import raw_images
from fruits_assets.defs.reduction import (
    explained_variance_reaches_target,
    labels_not_empty,
    pca_basis_fits_new_rows,
    pca_features,
    pca_rows_match_features,
    scaled_features,
)

FEATURE_ASSETS = [raw_images, cnn_features, scaled_features, pca_features]  # the feature tables, no classifier
FEATURE_CHECKS = [
    counts_reconcile,
    features_are_finite_1280,
    one_cnn_engine,
    pca_rows_match_features,
    explained_variance_reaches_target,
    pca_basis_fits_new_rows,
    labels_not_empty,
]
ASSETS = [*FEATURE_ASSETS, training_features, fruit_classifier]
CHECKS = [*FEATURE_CHECKS, accuracy_above_floor, pca_costs_little_accuracy]
