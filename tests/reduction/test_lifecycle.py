"""The reuse-or-refit decision of saved models: pure, no Spark."""

from spark_code.reduction.lifecycle import SavedModel, decide, portable

SCALER = "file:/out/models/scaled_features/v-20261202T010000-aaaa1111"


def _saved(**fitted_with) -> SavedModel:
    return SavedModel(
        model=object(), uri="file:/out/models/pca_features/v-20261202T020000-bbbb2222", fitted_with=fitted_with
    )


def test_nothing_saved_or_refit_asked_refits():
    assert decide(None, {"k": 4}).refit
    assert decide(_saved(k=4), {"k": 4}, refit=True).reason == "refit requested"


def test_same_inputs_reuse_and_a_changed_one_is_named():
    saved = _saved(k=None, variance_target=0.95, scaler=SCALER)
    assert not decide(saved, {"k": None, "variance_target": 0.95, "scaler": SCALER}).refit
    verdict = decide(saved, {"k": 8, "variance_target": 0.95, "scaler": SCALER})
    assert verdict.refit and verdict.reason == "inputs changed: k"


def test_versions_compare_by_name_so_a_moved_output_keeps_its_models():
    saved = _saved(scaler=SCALER, inputs={"pca": SCALER.replace("scaled", "pca")})
    moved = {
        "scaler": SCALER.replace("file:/out", "s3://bucket/copy"),
        "inputs": {"pca": "/elsewhere/pca_features/v-20261202T010000-aaaa1111"},
    }
    assert not decide(saved, moved).refit
    newer = SCALER.replace("aaaa1111", "cccc3333")
    assert decide(saved, {"scaler": newer}).reason == "inputs changed: scaler"
    assert portable({"a": [SCALER], "b": 3}) == {"a": ["v-20261202T010000-aaaa1111"], "b": 3}


def test_drift_refits_only_when_the_policy_says_so():
    saved = _saved(k=4)
    assert not decide(saved, {"k": 4}, drift=0.2, max_drift=0.03).refit  # measured and reported, not acted on
    assert decide(saved, {"k": 4}, drift=0.2, max_drift=0.03, refit_on_drift=True).reason == "drift 0.2 > 0.03"
    assert not decide(saved, {"k": 4}, drift=0.01, max_drift=0.03, refit_on_drift=True).refit
    assert not decide(saved, {"k": 4}, drift=None, max_drift=0.03, refit_on_drift=True).refit


def test_nothing_wanted_keeps_the_saved_model():
    assert not decide(_saved(cnn_model="mobilenet_v2-224px-onnx"), {}).refit  # an empty batch: nothing to check
