"""Time the PCA's accuracy curve (k chosen by classifier accuracy) on a finished run's tables; JSON on stdout.

`python -m bench.accuracy_curve --output <FRUITS_OUTPUT_URI of a full run>`: one PCA fit on the current scaled rows,
then the curve on the training photos (fit) and the corpus (validation), as `pca_features` does it.
"""

import argparse
import json
import time

from bench.common import session


def main() -> None:
    """Fit, time the curve, print the curve, the chosen k and the seconds."""
    from pyspark.ml.feature import StandardScalerModel

    from spark_code.classify import classifier as clf
    from spark_code.reduction import choose_k, scaler_pca
    from spark_code.storage import tables, versions

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    spark = session()
    scaled = tables.read(spark, f"{args.output}/scaled_features")
    estimator = scaler_pca.VariancePCA(inputCol="scaled_features", outputCol="pca_features", k=0, varianceTarget=0.95)
    started = time.perf_counter()
    model = estimator.fit(scaled)
    fit_s = time.perf_counter() - started
    ks = choose_k.candidate_ks(model.fullExplainedVariance, 0.95)
    scaler = versions.load_model(spark, StandardScalerModel, f"{args.output}/models", "scaled_features")
    training = tables.read(spark, f"{args.output}/training_features").select("path", "label", "features")
    started = time.perf_counter()
    curve = choose_k.accuracy_curve(
        scaler_pca.transform_arrays(scaler, training),
        scaled,
        scaler_pca.truncate(model, max(ks)),
        ks,
        clf.LogisticSettings(max_iter=100).accuracy_by_k,
    )
    curve_s = time.perf_counter() - started
    print(
        json.dumps(
            {
                "pca_fit_s": round(fit_s, 1),
                "curve_s": round(curve_s, 1),
                "curve": curve,
                "k": choose_k.smallest_accurate_k(curve, 0.003),
            }
        )
    )


if __name__ == "__main__":
    main()
