"""The paper's reported numbers (Tables 2-9), to print beside ours.

``resources/paper_results.csv`` holds every number of Salama et al. (2024),
Tables 2-9: mean and standard deviation over 10 repetitions of MAE, MAPE (%)
and accuracy (%), keyed by table, size range, backbone, rank, method and
variant (ablation).  The CSV keeps the paper's percent; :func:`paper_results`
converts MAPE and accuracy to fractions, the units of the metric, so ours and
the paper's are compared as they are (this is the one place of that conversion).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from .configs import BenchmarkConfig

#: The paper on arXiv: Salama, Kahana, Horwitz, Hoshen (2024), Dataset Size Recovery from LoRA Weights.
ARXIV_ID = "2406.19395"


@dataclass(frozen=True)
class PaperResult:
    """One row of the paper: MAE in images, MAPE and accuracy as fractions (as the metric returns them)."""

    table: int
    data_range: str
    backbone: str
    rank: int
    method: str
    variant: str
    mae: float
    mae_std: float
    mape: float
    mape_std: float
    accuracy: float
    accuracy_std: float


def _fraction(percent: str) -> float:
    """A percent of the paper's CSV as the metric's fraction (``"86.1"`` -> 0.861)."""
    return round(float(percent) / 100.0, 12)


@lru_cache(maxsize=1)
def paper_results() -> tuple[PaperResult, ...]:
    text = resources.files("lora_wise").joinpath("resources/paper_results.csv").read_text()
    rows = []
    for row in csv.DictReader(text.splitlines()):
        rows.append(PaperResult(
            table=int(row["table"]), data_range=row["data_range"], backbone=row["backbone"],
            rank=int(row["rank"]), method=row["method"], variant=row["variant"],
            mae=float(row["mae"]), mae_std=float(row["mae_std"]), mape=_fraction(row["mape_pct"]),
            mape_std=_fraction(row["mape_pct_std"]), accuracy=_fraction(row["acc_pct"]),
            accuracy_std=_fraction(row["acc_pct_std"])))
    return tuple(rows)


def paper_result(config: BenchmarkConfig, method: str, variant: str = "") -> PaperResult | None:
    """The paper's figure for ``method`` on a config, or None where the paper reports none.

    Miniature configs have no paper figure.  ``variant`` selects an ablation row
    (``"matrices=A"``, ``"average-vote"``, ``"steps=300"`` ...); the plain method is
    the row without a variant (or the full-model/majority-vote row that equals it).
    """
    if config.miniature:
        return None
    plain = {"", "majority-vote", "matrices=A+B+BA"}
    for row in paper_results():
        if (row.data_range == config.size_range and row.backbone == config.backbone_name
                and row.rank == config.rank and row.method == method
                and (row.variant == variant or (not variant and row.variant in plain))):
            return row
    return None


def paper_counterpart(config: BenchmarkConfig, method: str) -> tuple[PaperResult | None, str]:
    """The paper's figure to show beside a config, and what it is.

    A paper config gets its own row.  A miniature config gets the paper's Table 2 row for the
    same size range (SD 1.5, rank 32): not the same experiment, but the figure it stands in for.
    """
    own = paper_result(config, method)
    if own is not None:
        return own, f"paper, Table {own.table}"
    if config.recipe.flip_augmentation:  # the defense: Table 6, where the paper has it for the range
        defense = find_paper_result(table=6, data_range=config.size_range, method=method,
                                    variant="flip-augmentation-defense")
        if defense is not None:
            return defense, f"paper, Table 6 (the flip defense, {defense.backbone.upper()}, rank {defense.rank})"
        return None, "no paper figure (the paper's defense table reports DSiRe only)"
    row = find_paper_result(table=2, data_range=config.size_range, method=method)
    if row is not None:
        return row, f"paper, Table 2 ({row.backbone.upper()}, rank {row.rank}, same size range)"
    return None, "no paper figure"


def find_paper_result(*, table: int, data_range: str | None = None, method: str = "dsire", variant: str = "",
                      rank: int | None = None, backbone: str = "sd1.5") -> PaperResult | None:
    """The paper's row of ``table`` that matches every given field (the first, in the paper's order), or None."""
    for row in paper_results():
        if (row.table == table and row.method == method and row.variant == variant and row.backbone == backbone
                and (data_range is None or row.data_range == data_range) and (rank is None or row.rank == rank)):
            return row
    return None
