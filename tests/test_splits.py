"""The standard split and the paper's draws reproduce the published reference script."""

from __future__ import annotations

import random

import pytest

from lora_wise.configs import get_config, iter_configs
from lora_wise.splits import PAPER_DRAWS, draws, standard_split


def reference_script_draws(n_micro: int, n_train: int, n: int) -> list[list[int]]:
    """What the public reference script does: seed the global generator, then sample per experiment."""
    state = random.getstate()
    try:
        random.seed(42)
        return [random.sample(range(n_micro), n_train) for _ in range(n)]
    finally:
        random.setstate(state)


@pytest.mark.parametrize("config", [c.name for c in iter_configs()])
def test_draws_equal_the_reference_script(config):
    cfg = get_config(config)
    expected = reference_script_draws(cfg.num_micro_datasets, cfg.num_train_micro_datasets, PAPER_DRAWS)
    got = draws(cfg)
    assert [list(s.train) for s in got] == expected
    for split in got:
        assert sorted(split.train + split.test) == list(range(cfg.num_micro_datasets))
        assert not set(split.train) & set(split.test)


def test_paper_standard_split_is_the_first_draw():
    split = standard_split("medium_32")  # an alias works too
    assert sorted(split.train) == [1, 2, 5, 6, 7, 8, 14, 15, 17, 27, 34, 37, 40, 47, 49]
    assert len(split.test) == 35
    assert split.side(1) == "train" and split.side(0) == "test"
    with pytest.raises(ValueError, match="outside"):
        split.side(50)


def test_draws_do_not_disturb_the_global_random_state():
    random.seed(123)
    before = random.random()
    random.seed(123)
    draws("low_r8")
    assert random.random() == before
