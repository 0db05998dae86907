"""A table derived row by row from a source table through a saved model: what it has to take, and the one
reuse-or-refit shape of `scaled_features` and `pca_features`."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

from dagster import MetadataValue
from pyspark.sql import DataFrame

from fruits_assets.io.io_manager import UNCHANGED
from fruits_assets.io.resources import ModelStore, TableStore
from spark_code import unchanged
from spark_code.reduction.lifecycle import SavedModel, Verdict
from spark_code.storage.tables import Update, removed_paths, upserts


@dataclass(frozen=True)
class Derivation:
    """What a table derived row by row from a source table (through a saved model) has to take: every source row
    when the model is not the one that derived its rows (a refit), else the source's changes since the version it
    last took (none: nothing to write)."""

    tables: TableStore
    name: str
    source: str
    model: SavedModel | None
    taken: int
    until: int | None
    everything: bool

    @classmethod
    def of(cls, tables: TableStore, name: str, source: str, model: SavedModel | None) -> Derivation:
        """The derivation of table `name` from `source` with `model`, as the tables stand now."""
        derived_with = unchanged.derived_with(tables.base_uri, name)
        everything = model is None or derived_with != model.version
        return cls(tables, name, source, model, tables.consumed(name, source), tables.version(source), everything)

    @functools.cached_property
    def _net(self) -> DataFrame | None:
        if self.everything or self.until is None or self.until <= self.taken:
            return None
        # Not cached: after a long pause these rows (1,280 floats each) can outgrow the driver's heap; a batch's
        # few rows are read again at little cost.
        return self.tables.changes(self.source, self.taken, self.until)

    def new_rows(self) -> DataFrame | None:
        """The source rows the model has not derived yet (every row for a new model; None when there is none)."""
        if self.everything:
            return self.tables.table(self.source)
        return None if self._net is None else upserts(self._net)

    def update(self, derive: Callable[[DataFrame], DataFrame]) -> Update | None:
        """The commit that brings the table up to date (UNCHANGED when it is): rows made by `derive`."""
        recorded = {"model": self.model.version}
        source = None if self.until is None else (self.source, self.until)
        if self.everything:
            return Update(
                derive(self.tables.require_table(self.source)), replace=True, source=source, recorded=recorded
            )
        if self._net is None:
            return UNCHANGED
        return Update(derive(upserts(self._net)), removed_paths(self._net), source=source, recorded=recorded)

    def describe(self) -> str:
        """For the log: what this run derives."""
        if self.everything:
            return f"every row of {self.source} (version {self.until})"
        if self._net is None:
            return f"{self.name} is current with {self.source} version {self.until}"
        return f"the changes of {self.source} versions {self.taken + 1}..{self.until}"

    def metadata(self) -> dict:
        """What the UI shows of the derivation."""
        return {"source_version": self.until, "rederived": self.everything, "derived": self.describe()}


@dataclass(frozen=True)
class Derived:
    """The model a run derives with (reused or refit), why, the drift measured (None: not measured), and the
    derivation it makes."""

    saved: SavedModel
    verdict: Verdict
    pending: Derivation
    drift: float | None = None

    def metadata(self) -> dict:
        """What the UI shows of every derived table: the model, whether it was refit, the derivation."""
        return {"model_uri": MetadataValue.path(self.saved.uri), "refit": self.verdict.refit, **self.pending.metadata()}


def reuse_or_refit(
    tables: TableStore,
    models: ModelStore,
    table: tuple[str, str],
    model_class: type,
    decide: Callable[[SavedModel | None, Derivation], tuple[Verdict, float | None]],
    fit: Callable[[], SavedModel],
) -> Derived:
    """The saved model of table `table[0]` (derived from `table[1]`), kept when `decide` says so, else `fit` anew;
    with what the derivation then has to take."""
    name, source = table
    saved = models.latest(model_class, name)
    pending = Derivation.of(tables, name, source, saved)
    verdict, drift = decide(saved, pending)
    if verdict.refit:
        saved = fit()
        pending = Derivation.of(tables, name, source, saved)
    return Derived(saved, verdict, pending, drift)
