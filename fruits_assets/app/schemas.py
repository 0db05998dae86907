"""What `fruits serve` answers, as pydantic models: they validate each answer and document it in /docs."""

from __future__ import annotations

from pydantic import BaseModel, Field


class TopClass(BaseModel):
    """One of the best classes of a photo."""

    label: str
    probability: float = Field(ge=0, le=1)


class CnnVersion(BaseModel):
    """The CNN that made the features: engine and precision, input size, the weights' SHA-256."""

    engine: str = Field(examples=["openvino-bf16"])
    input_size: int
    weights: str


class ModelVersions(BaseModel):
    """The models that answered: the classifier's version folder and the CNN."""

    classifier: str = Field(examples=["v-20261207T101500123456Z-1a2b3c4d"])
    cnn: CnnVersion


class Classification(BaseModel):
    """One photo's fruit, or `unknown` when the open-set score rejects it; the top-3 and the score that decided."""

    photo: str
    label: str = Field(examples=["Banana", "unknown"])
    top: list[TopClass]
    score: float | None = Field(description="the open-set score of the photo (its decision: the classifier's)")
    models: ModelVersions


class Health(BaseModel):
    """Whether a classifier is loaded, which one, and the server's load."""

    ready: bool
    classifier: str | None
    classes: int | None
    cnn: CnnVersion | None
    in_progress: int = Field(description="photos admitted and not yet answered")
    batches: int = Field(description="CNN calls since the start")
    reload_problem: str | None = Field(description="why the newest version could not be loaded (the old one serves)")


class Problem(BaseModel):
    """Why a request was refused."""

    detail: str
