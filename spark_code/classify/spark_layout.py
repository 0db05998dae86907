"""Versions of the classifier saved before the `serving.json` sidecar: their arrays read from the files Spark ML
writes for a PipelineModel (each stage's metadata JSON and Parquet data row). Kept so that such versions still
serve; a refit writes the sidecar, and once no such version is left (old versions are pruned) this module can go.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq


def _vector(cell: dict) -> np.ndarray:
    """A Spark ML vector (its Parquet struct) as a dense array."""
    values = np.asarray(cell["values"], dtype=np.float64)
    if cell["type"] == 1:
        return values
    dense = np.zeros(cell["size"])
    dense[np.asarray(cell["indices"], dtype=np.int64)] = values
    return dense


def _matrix(cell: dict) -> np.ndarray:
    """A Spark ML matrix (its Parquet struct: column-major, or row-major when transposed) as a dense array."""
    rows, cols, values = cell["numRows"], cell["numCols"], np.asarray(cell["values"], dtype=np.float64)
    if cell["type"] == 1:
        return values.reshape(rows, cols) if cell["isTransposed"] else values.reshape(cols, rows).T
    major, minor = (rows, cols) if cell["isTransposed"] else (cols, rows)
    dense = np.zeros((major, minor))
    pointers, indices = cell["colPtrs"], cell["rowIndices"]
    for outer in range(major):
        for position in range(pointers[outer], pointers[outer + 1]):
            dense[outer, indices[position]] = values[position]
    return dense if cell["isTransposed"] else dense.T


def _stage(folder: Path) -> tuple[dict, dict | None]:
    """A saved stage's params (metadata JSON) and its single data row, if it has data."""
    metadata = json.loads((folder / "metadata" / "part-00000").read_text().splitlines()[0])
    data = folder / "data"
    row = pq.read_table(data).to_pylist()[0] if data.exists() else None
    return metadata, row


def pipeline_arrays(folder: Path) -> dict:
    """The arrays of a saved classifier PipelineModel (scaler, [PCA], logistic regression, IndexToString), read
    from Spark's files with pyarrow."""
    stages = {}
    for path in sorted((folder / "stages").iterdir()):
        metadata, row = _stage(path)
        stages[metadata["class"].rsplit(".", 1)[-1]] = (metadata["paramMap"], row)
    params, scaler = stages["StandardScalerModel"]
    std = _vector(scaler["std"])
    mean = _vector(scaler["mean"]) if params.get("withMean", False) else np.zeros_like(std)
    scale = np.divide(1.0, std, out=np.zeros_like(std), where=std != 0) if params.get("withStd", True) else 1.0
    components = _matrix(stages["PCAModel"][1]["pc"]) if "PCAModel" in stages else None
    regression = stages["LogisticRegressionModel"][1]
    labels = stages["IndexToString"][0]["labels"]
    return {
        "mean": mean,
        "scale": scale,
        "components": components,
        "coefficients": _matrix(regression["coefficientMatrix"]),
        "intercepts": _vector(regression["interceptVector"]),
        "labels": list(labels),
    }
