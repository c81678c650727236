"""Train/test splits over micro-datasets: the standard split and the paper's 10 draws.

LoRA-WiSE splits by micro-dataset, never by model: every size of one concept is
on the same side, so a predictor is always tested on concepts it never saw.

The draws follow the published reference script exactly: ``random.seed(42)``
once, then for each experiment ``random.sample(range(M), n_train)`` picks the
indices of the train micro-datasets (M = 50 and n_train = 15 for the paper's
configs); the others are test.  The **standard split** is the first draw; the
**paper protocol** is the first ten.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .configs import BenchmarkConfig, get_config

SEED = 42
PAPER_DRAWS = 10


@dataclass(frozen=True)
class Split:
    """Indices (into the config's micro-dataset list) of the train and test micro-datasets.

    ``train`` keeps the order of the draw, so ``train[:n]`` is a nested subset of
    the training micro-datasets (used for the paper's Fig. 5).
    """

    train: tuple[int, ...]
    test: tuple[int, ...]

    def side(self, micro_dataset_index: int) -> str:
        """``"train"`` or ``"test"``; raises for an index outside the config."""
        if micro_dataset_index in self.train:
            return "train"
        if micro_dataset_index in self.test:
            return "test"
        raise ValueError(f"micro-dataset index {micro_dataset_index} is outside this split "
                         f"(0 .. {len(self.train) + len(self.test) - 1})")


def draws(config: BenchmarkConfig | str, n: int = PAPER_DRAWS, seed: int = SEED) -> list[Split]:
    """The first ``n`` successive draws of the reference protocol for ``config``."""
    cfg = get_config(config) if isinstance(config, str) else config
    rng = random.Random(seed)  # same stream as random.seed(seed) on the global generator
    population = range(cfg.num_micro_datasets)
    out = []
    for _ in range(n):
        train = rng.sample(population, cfg.num_train_micro_datasets)
        chosen = set(train)
        out.append(Split(train=tuple(train),
                         test=tuple(i for i in population if i not in chosen)))
    return out


def standard_split(config: BenchmarkConfig | str) -> Split:
    """The standard split of a config: the reference protocol's first draw."""
    return draws(config, 1)[0]
