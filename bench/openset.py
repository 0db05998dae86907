"""Open-set rejection and compact PCA, measured on the tables of a finished run (no CNN pass): JSON out.

Reads the current `cnn_features` (the corpus, e.g. the 22,688 Test photos) and `training_features` of an output
folder, then measures, with the product's own code:
- accuracy against k on every class (logistic regression trained on the training photos, scored on the corpus);
- the held-out-classes protocol (`rejection_metrics.held_out_classes`: the classes at sorted positions 2, 7, 12, …
  are unknown) for each score, with the run's saved scaler and PCA, and again with a scaler and PCA refitted on the
  knowns' photos only (the unknown classes then reach no fitted part at all);
- the saved classifier (its scaler, PCA and logistic regression) with the current open-set code: its accuracy, every
  score fitted on the training photos and calibrated on the corpus's photos, and what it answers for non-fruit images
  (matplotlib's sample images, flat colours, noise, text) by each score;
- bytes per photo of each table.

Corpus photos whose file name starts with `--exclude-prefix` (default `new_`: Training photos that
`bench/incremental.py` links into the corpus as "new" photos) are left out of every measurement but the table sizes:
they are training photos, so as knowns they would sit at distance 0 from the training bank.

    .venv/bin/python -m bench.openset --features-from data
"""

from __future__ import annotations

import argparse
import dataclasses
import io as bytes_io
import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path

import matplotlib
import numpy as np
import pyarrow as pa
from PIL import Image
from pyspark.ml.feature import PCAModel, StandardScalerModel
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from bench.common import drawn_non_fruit, session
from fruits_assets.deploy.settings import Settings
from spark_code.classify import classifier as clf
from spark_code.classify import classifier_fit, openset, rejection_metrics
from spark_code.classify.serving import load_pipeline
from spark_code.reduction import choose_k, scaler_pca
from spark_code.storage import lake, tables, versions

TABLES = ("cnn_features", "quarantined_images", "scaled_features", "pca_features", "training_features")


def accuracy_by_k(train, test, scaler, explained: np.ndarray, full_pca: PCAModel) -> dict[int, dict]:
    """Accuracy and macro-F1 on every corpus class for each candidate k (the issue's measure), each classifier
    fitted by the asset's trainer."""
    curve = {}
    x, labels = classifier_fit.training_arrays(train)
    for k in choose_k.candidate_ks(explained):
        started = time.perf_counter()
        fitted = classifier_fit.fit_classifier(
            x, labels, scaler, scaler_pca.truncate(full_pca, k), clf.LogisticSettings(), with_scores=False
        )
        scored = classifier_fit.score_corpus(test, {"k": fitted.scorer()})["k"]
        evaluation = clf.evaluate(scored.pairs(), fitted.labels())
        curve[k] = {"accuracy": round(evaluation.accuracy, 4), "macro_f1": round(evaluation.macro_f1, 4)}
        print(f"k={k}: {curve[k]} ({time.perf_counter() - started:.0f} s)", flush=True)
    return curve


def protocol(train, test, scaler, pca, accept: float) -> dict:
    """The held-out-classes protocol with the given scaler and PCA (the asset's trainer and protocol)."""
    result = classifier_fit.validate(train, test, scaler, pca, clf.LogisticSettings(), accept).protocol
    if result is None:
        raise SystemExit("the protocol needs at least 3 training classes and test photos of both kinds")
    reports = {
        r.score: {"auroc": round(r.auroc, 4), "rejected_at_accept": round(r.rejected_at_accept, 4)}
        for r in result.reports
    }
    print(json.dumps(reports), flush=True)
    return {
        "k": pca.getK(),
        "known_classes": len(result.known_classes),
        "held_out_classes": result.held_out,
        "known_photos": result.known_rows,
        "unknown_photos": result.unknown_rows,
        "scores": reports,
        "best": rejection_metrics.best(result.reports).score,
    }


def strict_protocol(train, test, k: int, accept: float) -> dict:
    """The protocol with scaler and PCA refitted on the known classes' corpus photos only."""
    classes = sorted(r.label for r in train.select("label").distinct().collect())
    known_test = test.filter(~F.col("label").isin(rejection_metrics.held_out_classes(classes)))
    scaler = scaler_pca.fit_scaler(known_test, "features", "scaled_features")
    pca = scaler_pca.VariancePCA(inputCol="scaled_features", outputCol="pca_features", k=k)
    return protocol(train, test, scaler, pca.fit(scaler_pca.transform_arrays(scaler, known_test, "float64")), accept)


def non_fruit_images() -> dict[str, bytes]:
    """matplotlib's sample photos and drawings, a yellow flat colour, and the tests' flat colours, noise and text."""
    sample = Path(matplotlib.get_data_path()) / "sample_data"
    images = {name: (sample / name).read_bytes() for name in ("logo2.png", "Minduka_Present_Blue_Pack.png")}
    images["grace_hopper.jpg"] = (sample / "grace_hopper.jpg").read_bytes()
    yellow = bytes_io.BytesIO()
    Image.new("RGB", (120, 120), "#e0c020").save(yellow, format="PNG")
    return {**images, **drawn_non_fruit(), "flat #e0c020": yellow.getvalue()}


def classify_non_fruit(models: str, rejection: openset.OpenSetModel) -> dict:
    """What `fruits classify` answers for each non-fruit image with the saved pipeline and `rejection`: the default
    decision's label, and each score's value and verdict at its calibrated threshold."""
    from fruits_assets.app.engine import FruitClassifier
    from spark_code.classify.serving import load_pipeline
    from spark_code.storage.versions import local_folder

    pipeline = dataclasses.replace(load_pipeline(local_folder(models, "fruit_classifier")), openset=rejection)
    engine = FruitClassifier(pipeline, Settings.from_env().weights)
    answers = {}
    for name, data in non_fruit_images().items():
        prediction = engine.classify_bytes(data, name)
        features = engine.features(data, name).astype(np.float64)
        verdicts = {}
        for score in openset.SCORES:
            value = float(pipeline.score(score, features)[0])
            verdicts[score] = {"value": round(value, 4), "unknown": not rejection.decision_for(score).known(value)}
        answers[name] = {"label": prediction.label, "top": prediction.top[0], "scores": verdicts}
    rejected = {score: sum(a["scores"][score]["unknown"] for a in answers.values()) for score in openset.SCORES}
    print(json.dumps(answers), flush=True)
    return {"decision": vars(engine.decision), "rejected_of": len(answers), "rejected": rejected, "answers": answers}


def table_bytes(spark: SparkSession, base: str) -> dict[str, dict]:
    """Parquet bytes of each table's current version (the files its log names), rows and bytes per photo."""
    from deltalake import DeltaTable

    sizes = {}
    for name in TABLES:
        if lake.version(f"{base}/{name}") is None:
            continue
        actions = pa.table(DeltaTable(f"{base}/{name}").get_add_actions(flatten=True))
        total, rows = sum(actions.column("size_bytes").to_pylist()), lake.rows(f"{base}/{name}")
        sizes[name] = {"bytes": total, "rows": rows, "bytes_per_photo": round(total / max(rows, 1), 1)}
    return sizes


def saved_classifier(models: str, train, test, score: str, accept: float) -> tuple[dict, openset.OpenSetModel]:
    """The saved classifier's figures on the corpus, with the current open-set code as the asset runs it: every score
    fitted on the training photos and calibrated on the corpus's known-class photos, `score` the default."""
    uri = versions.latest_uri(models, "fruit_classifier")
    pipeline = load_pipeline(versions.local_folder(models, "fruit_classifier"))  # its serving.json, as the app reads
    saved = pipeline.openset
    x, labels = classifier_fit.training_arrays(train)
    scores = openset.fit_feature_scores(pipeline.project(x), labels)
    scored = classifier_fit.score_corpus(test, {"saved": classifier_fit.Scorer(pipeline, scores)})["saved"]
    known = np.isin(scored.labels, pipeline.labels)
    evaluation = clf.evaluate(scored.pairs(), pipeline.labels)
    rejection = openset.calibrated(score, {n: scored.values(n)[known] for n in openset.SCORES}, scores, accept)
    accepted = {
        name: round(float(rejection.decision_for(name).known(scored.values(name))[known].mean()), 4)
        for name in openset.SCORES
    }
    figures = {
        "uri": uri,
        "k": None if pipeline.components is None else pipeline.components.shape[1],
        "accuracy": round(evaluation.accuracy, 4),
        "macro_f1": round(evaluation.macro_f1, 4),
        "test_rows": evaluation.rows,
        "default_score": rejection.score,
        "saved_default_score": saved.score,
        "thresholds": rejection.thresholds,
        "known_accepted": accepted,
    }
    return figures, rejection


def run(base: str, accept: float, exclude_prefix: str = "new_") -> dict:
    """Every measurement on the tables under `base`."""
    spark, started, models = session(), time.perf_counter(), f"{base}/models"
    corpus = tables.read(spark, f"{base}/cnn_features").select("path", "label", "features")
    name = F.element_at(F.split("path", "/"), -1)
    test = (corpus.filter(~name.startswith(exclude_prefix)) if exclude_prefix else corpus).cache()
    train = tables.read(spark, f"{base}/training_features").select("path", "label", "features").cache()
    excluded = corpus.count() - test.count()
    print(f"{test.count()} corpus photos ({excluded} {exclude_prefix}* left out), {train.count()} training", flush=True)
    result = {"features_from": base, "accept_rate": accept, "tables": table_bytes(spark, base)}
    result["excluded_corpus_photos"] = {"prefix": exclude_prefix, "photos": excluded}
    scaler = versions.load_model(spark, StandardScalerModel, models, "scaled_features")
    pca = versions.load_model(spark, PCAModel, models, "pca_features")
    result["protocol"] = protocol(train, test, scaler, pca, accept)
    result["protocol_pca_on_knowns_only"] = strict_protocol(train, test, pca.getK(), accept)
    best_score = result["protocol"]["best"]  # what `unknown_score: auto` saves
    result["saved_classifier"], rejection = saved_classifier(models, train, test, best_score, accept)
    estimator = scaler_pca.VariancePCA(inputCol="scaled_features", outputCol="pca_features", varianceTarget=0.95)
    full = estimator.fit(scaler_pca.transform_arrays(scaler, test, "float64"))
    curve = accuracy_by_k(train, test, scaler, full.fullExplainedVariance, full)
    best = max(v["accuracy"] for v in curve.values())
    chosen = min(k for k, v in curve.items() if v["accuracy"] >= best - 0.003)
    result["accuracy_by_k"] = {"curve": curve, "smallest_within_0.003_of_best": chosen, "k_95_variance": full.getK()}
    pca_json = versions.read_text(spark, f"{versions.latest_uri(models, 'pca_features')}/pca.json")
    result["asset_accuracy_curve"] = json.loads(pca_json or "{}").get("accuracy_curve")
    result["non_fruit"] = classify_non_fruit(models, rejection)
    result["seconds"] = round(time.perf_counter() - started, 1)
    spark.stop()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features-from", required=True, help="output folder of a finished run (FRUITS_OUTPUT_URI)")
    parser.add_argument("--accept", type=float, default=0.95, help="share of known photos accepted (default 0.95)")
    parser.add_argument("--json", default="bench/results/openset.json", help="where to write the results")
    parser.add_argument(
        "--exclude-prefix",
        default="new_",
        help="leave out corpus photos whose name starts with this (default new_: linked Training photos; '' keeps all)",
    )
    args = parser.parse_args()
    base = os.path.abspath(args.features_from)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    result = {"date": started, **run(base, args.accept, args.exclude_prefix)}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({key: result[key] for key in ("protocol", "saved_classifier", "tables")}, indent=2))
    print(f"written to {args.json}")


if __name__ == "__main__":
    main()
