"""The test set a method predicts carries no label: not in its ids, its order, its attributes or its weights.

A LoRA-WiSE model id is ``<config>/<micro_dataset>/n<size>`` and the dataset is sorted by
micro-dataset and size, so a test set shown with its ids, or in the dataset's order, hands a
method every label.  Methods that cheat through either channel must score at chance through
``run_protocol`` and ``lora_wise.evaluate``; the object graph of the test set must hold no size
and no real id; the built-in baselines must predict exactly what the feature-table path predicts,
draw by draw; results records and the leaderboard keep the real ids.
"""

from __future__ import annotations

import re
import types

import numpy as np
import pytest

import lora_wise
from lora_wise.baselines import BASELINES
from lora_wise.data import WeightsByModel, feature_table
from lora_wise.features import FeatureTable
from lora_wise.leaderboard.scoring import submit
from lora_wise.leaderboard.store import SQLiteStore
from lora_wise.protocol import blind, run_protocol
from lora_wise.splits import draws

CONFIG = "mini_low_r8"  # sizes 1..6: 210 test models per draw, 35 of each size


@pytest.fixture(scope="module")
def table(synthetic_benchmark) -> FeatureTable:
    return feature_table(synthetic_benchmark, CONFIG)


@pytest.fixture(scope="module")
def weights(synthetic_benchmark) -> WeightsByModel:
    return WeightsByModel(synthetic_benchmark, CONFIG)


class IdReader:
    """Cheats: reads each test model's size out of its id (``.../n3`` -> 3); 1 where the id has no number."""

    def fit(self, train, sizes):
        return self

    def predict(self, test):
        return [max(1, int((re.findall(r"\d+", m) or ["1"])[-1])) for m in test.model_ids]


class RowOrder:
    """Cheats: the dataset is sorted by micro-dataset and size, so the sizes cycle; predicts the cycle by position."""

    def fit(self, train, sizes):
        sizes = np.asarray(sizes)
        self.cycle = sizes[: len(np.unique(sizes))]  # the first micro-dataset's sizes, in the dataset's order
        return self

    def predict(self, test):
        return np.resize(self.cycle, len(test))


class Keep:
    """Keeps the sets it is shown (and predicts the most common training size)."""

    shown: list = []

    def fit(self, train, sizes):
        Keep.shown.append(train)
        values, counts = np.unique(sizes, return_counts=True)
        self.size = int(values[counts.argmax()])
        return self

    def predict(self, test):
        Keep.shown.append(test)
        return np.full(len(test), self.size)


#: An upper bound of chance accuracy: 35 of 210 (1/6) expected, so 0.35 is more than 7 standard deviations above.
CHANCE = 0.35


@pytest.mark.parametrize("cheat", [IdReader, RowOrder])
def test_methods_that_read_ids_or_row_order_score_at_chance(synthetic_benchmark, table, cheat):
    result = run_protocol(table, CONFIG, cheat, protocol="paper")
    accuracies = [d.metrics["accuracy"] for d in result.draws]
    assert np.mean(accuracies) < CHANCE and max(accuracies) < 0.5, accuracies
    record = lora_wise.evaluate(cheat, synthetic_benchmark, CONFIG, protocol="paper")
    assert record["summary"]["accuracy"]["mean"] < CHANCE
    # the cheat itself works where ids and order are the dataset's: on the feature table's path it is exact
    split = draws(CONFIG, 1)[0]
    train, test = table.subset(table.rows_of(split.train)), table.subset(table.rows_of(split.test))
    from lora_wise.methods import ModelSet

    exposed = cheat().fit(ModelSet.from_table(train), train.dataset_sizes).predict(ModelSet.from_table(test))
    np.testing.assert_array_equal(exposed, test.dataset_sizes)


def reachable(root, limit: int = 100_000) -> list:
    """Every object reachable from ``root`` through attributes, slots, containers, closures and bound methods."""
    seen, stack, out = set(), [root], []
    while stack and len(out) < limit:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, (type, types.ModuleType)):
            continue
        seen.add(id(obj))
        out.append(obj)
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        elif isinstance(obj, (str, bytes, int, float, np.ndarray, np.generic)):
            continue
        else:
            if isinstance(obj, types.FunctionType):
                stack.extend(cell.cell_contents for cell in obj.__closure__ or ())
            if isinstance(obj, types.MethodType):
                stack.append(obj.__self__)
            if hasattr(obj, "__dict__"):
                stack.append(vars(obj))
            for slot in getattr(type(obj), "__slots__", ()):
                if hasattr(obj, slot):
                    stack.append(getattr(obj, slot))
    return out


def test_nothing_reachable_from_the_test_set_holds_a_size_or_a_real_id(synthetic_benchmark, table, weights):
    Keep.shown = []
    result = run_protocol(table, CONFIG, Keep, protocol="standard", weights=weights)
    train, test = Keep.shown
    split = draws(CONFIG, 1)[0]
    test_ids = {m for m, i in zip(table.model_ids, table.micro_dataset_indices) if i in split.test}
    objects = reachable(test)
    assert any(isinstance(o, WeightsByModel) for o in objects)  # the walk reaches the reader of weights
    assert not any(isinstance(o, FeatureTable) for o in objects)
    strings = [o for o in objects if isinstance(o, str)]
    assert not test_ids & set(strings) and not [s for s in strings if re.search(r"/n\d+$", s)]
    assert test.model_ids == [f"model-{j:04d}" for j in range(len(test))]
    sizes = result.standard.references  # in the table's order
    _, order = blind(table.subset(table.rows_of(split.test)), 0)
    for labels in (sizes, sizes[order]):  # in the dataset's order or as shown
        assert not any(isinstance(o, np.ndarray) and o.shape == labels.shape and np.array_equal(o, labels)
                       for o in objects)
        assert labels.tolist() not in [o for o in objects if isinstance(o, (list, tuple))]
    # the training set's reader knows the training models only: no test id is reachable from it
    assert not test_ids & {o for o in reachable(train) if isinstance(o, str)}
    assert set(train.model_ids) == {m for m, i in zip(table.model_ids, table.micro_dataset_indices)
                                    if i in split.train}


def test_the_test_order_is_a_seeded_shuffle_and_the_predictions_go_back_to_their_models(table, weights):
    Keep.shown = []

    class Echo(Keep):
        """Predicts each test model's mean ||BA||_F: a prediction that tells which model it was made for."""

        def predict(self, test):
            return test.norms().mean(axis=1)

    result = run_protocol(table, CONFIG, Echo, protocol="paper")
    for i, (draw, split) in enumerate(zip(result.draws, draws(CONFIG, 10))):
        test = table.subset(table.rows_of(split.test))
        assert draw.model_ids == test.model_ids  # real ids, in the table's order
        np.testing.assert_allclose(draw.predictions, test.norms["BA"].mean(axis=1), rtol=1e-6)
        shown, order = blind(test, i)
        again, same = blind(test, i)
        np.testing.assert_array_equal(order, same)  # the same on every run
        assert sorted(order.tolist()) == list(range(len(test))) and not np.array_equal(order, np.arange(len(test)))
        np.testing.assert_array_equal(shown.spectra("B"), test.sv["B"][order])
        # the sizes as shown do not cycle with the position any more
        cycle = np.resize(np.arange(1, 7), len(test))
        assert np.mean(test.dataset_sizes[order] == cycle) < 0.5
    orders = {tuple(blind(table.subset(table.rows_of(s.test)), i)[1]) for i, s in enumerate(draws(CONFIG, 10))}
    assert len(orders) == 10  # a shuffle of its own for every draw


def test_a_test_model_s_weights_come_without_the_file_s_metadata(table, weights):
    Keep.shown = []
    run_protocol(table, CONFIG, Keep, protocol="standard", weights=weights)
    train, test = Keep.shown
    assert train.weights(0).metadata == {"format": "pt"}  # what the synthetic files carry
    for j in (0, len(test) - 1):
        lora = test.weights(j)
        assert lora.metadata == {}
        # the layers are the shown model's: its features are those of the set
        layer = lora[test.layer_names[0]]
        np.testing.assert_allclose(test.norms("A")[j, 0], np.linalg.norm(layer.A.astype(np.float64)), rtol=1e-5)
    reader = weights.only(table.model_ids[:2], ["x", "y"], metadata=False)
    assert len(reader) == 2 and "x" in reader and table.model_ids[0] not in reader
    assert reader("y").metadata == {} and reader("y").layers.keys() == weights(table.model_ids[1]).layers.keys()
    np.testing.assert_array_equal(reader("y")[test.layer_names[0]].B, weights(table.model_ids[1])[test.layer_names[0]].B)


@pytest.mark.parametrize("name", list(BASELINES))
def test_the_baselines_predict_as_on_the_feature_table_draw_by_draw(table, name):
    """The baselines' predictions of a model do not depend on the other test models or their order."""
    result = run_protocol(table, CONFIG, name, protocol="paper")
    for draw, split in zip(result.draws, draws(CONFIG, 10)):
        train, test = table.subset(table.rows_of(split.train)), table.subset(table.rows_of(split.test))
        direct = BASELINES[name]().fit(train).predict(test)
        assert draw.model_ids == test.model_ids
        np.testing.assert_array_equal(draw.predictions, direct)
        np.testing.assert_array_equal(draw.references, test.dataset_sizes)


def test_records_and_the_leaderboard_keep_the_real_ids(synthetic_benchmark, table, tmp_path):
    path = tmp_path / "results.json"
    record = lora_wise.evaluate(RowOrder, synthetic_benchmark, CONFIG, protocol="paper", out=path)
    truth = dict(zip(table.model_ids, table.dataset_sizes.tolist()))
    for draw, split in zip(record["draws"], draws(CONFIG, 10)):
        test_ids = [m for m, i in zip(table.model_ids, table.micro_dataset_indices) if i in split.test]
        assert list(draw["predictions"]) == test_ids
        accuracy = np.mean([round(draw["predictions"][m]) == truth[m] for m in test_ids])
        assert draw["metrics"]["accuracy"] == pytest.approx(accuracy)
    entry = submit(path, dataset=synthetic_benchmark, store=SQLiteStore(tmp_path / "lb.sqlite")).entry
    for mine, theirs in zip(entry.draws, record["draws"]):  # rescored by real id: the same numbers
        assert mine["predictions"] == pytest.approx(theirs["predictions"])
        assert mine["metrics"]["accuracy"] == pytest.approx(theirs["metrics"]["accuracy"])
