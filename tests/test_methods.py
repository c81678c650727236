"""The method interface, the protocol runner on any method, and lora_wise.evaluate / lora-wise evaluate.

A method sees model sets: ids, norms, spectra and weights on demand, never the test sizes (nor
the test models' real ids or order: tests/test_blind_test_set.py).  The
built-in baselines go through the same interface and predict exactly as before; a user's method
is loaded from a file or a module, run over the paper's draws, and its results record holds what
an independent computation gives.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

import lora_wise
from lora_wise import results
from lora_wise.baselines import DSiRe, FrobeniusNN, NNFullModel
from lora_wise.cli import main
from lora_wise.data import WeightsByModel, feature_table, labels
from lora_wise.errors import LoRAWiSEError, MethodError
from lora_wise.methods import Method, ModelSet, load_method
from lora_wise.metrics.dataset_size_recovery import compute_metrics
from lora_wise.protocol import run_protocol
from lora_wise.configs import get_config
from lora_wise.splits import draws, standard_split

CONFIG = "mini_low_r8"

METHOD_FILE = '''
import numpy as np
from lora_wise.methods import Method


class NearestMeanNorm(Method):
    """The size of the training model whose mean |BA|_F is nearest."""

    def __init__(self, power=1.0):
        self.power = power

    def fit(self, train, sizes):
        self.x_, self.y_ = train.norms().mean(axis=1) ** self.power, np.asarray(sizes)
        return self

    def predict(self, test):
        x = test.norms().mean(axis=1) ** self.power
        return self.y_[np.abs(x[:, None] - self.x_[None, :]).argmin(axis=1)]


class NotAMethod:
    pass
'''


@pytest.fixture(scope="module")
def table(synthetic_benchmark):
    return feature_table(synthetic_benchmark, CONFIG)


@pytest.fixture
def method_file(tmp_path):
    path = tmp_path / "my_method.py"
    path.write_text(METHOD_FILE)
    return path


class Spy:
    """Records what the runner hands a method."""

    seen: list = []

    def fit(self, train, sizes):
        Spy.seen.append(("fit", train, np.asarray(sizes)))
        self.size = int(np.asarray(sizes)[0])
        return self

    def predict(self, test):
        Spy.seen.append(("predict", test, None))
        return [self.size] * len(test)


def test_a_method_sees_model_sets_and_the_test_set_has_no_labels(synthetic_benchmark, table):
    Spy.seen = []
    weights = WeightsByModel(synthetic_benchmark, CONFIG)
    run_protocol(table, CONFIG, Spy, protocol="standard", weights=weights)
    (_, train, sizes), (_, test, _) = Spy.seen
    split = draws(CONFIG, 1)[0]
    truth = dict(zip(table.model_ids, table.dataset_sizes.tolist()))
    assert isinstance(train, ModelSet) and isinstance(test, ModelSet)
    assert sizes.tolist() == [truth[m] for m in train.model_ids]  # the labels, in the order of the ids
    assert test.model_ids == [f"model-{j:04d}" for j in range(len(test))]  # opaque: a real id names its size
    # the test models are those of the test micro-datasets, shuffled (tests/test_blind_test_set.py)
    shown, expected = test.norms("B"), table.norms["B"][table.rows_of(split.test)]
    assert sorted(row.tobytes() for row in shown) == sorted(row.tobytes() for row in expected)
    assert not any(hasattr(test, a) for a in ("sizes", "dataset_sizes", "labels", "references"))
    assert len(test) == len(standard_split("mini_low_r8").test) * 6 and test.norms().shape == (len(test), 8) and test.spectra("A").shape == (len(test), 8, 8)
    # the features are those of the weights: ||BA||_F and the singular values of A, computed directly
    for i in (0, len(test) - 1):
        lora = test.weights(i)
        assert isinstance(lora, lora_wise.LoRAWeights)
        for j, name in enumerate(test.layer_names):
            layer = lora[name]
            scale = 1.0 if layer.scale is None else layer.scale
            ba = scale * layer.B.astype(np.float64) @ layer.A.astype(np.float64)
            assert test.norms()[i, j] == pytest.approx(np.linalg.norm(ba), rel=1e-5)
            assert test.norms("A")[i, j] == pytest.approx(np.linalg.norm(layer.A.astype(np.float64)), rel=1e-5)
            np.testing.assert_allclose(test.spectra("A")[i, j], np.linalg.svd(layer.A, compute_uv=False), rtol=1e-4)
    with pytest.raises(MethodError, match="unknown matrix"):
        test.spectra("C")


def test_weights_are_read_only_where_the_runner_was_given_access():
    models = ModelSet.from_arrays(["a"], norms=np.ones((1, 2)))
    with pytest.raises(MethodError, match="without access to the weights"):
        models.weights(0)


@pytest.mark.parametrize("cls, options", [(DSiRe, {}), (DSiRe, {"k": 3, "vote": "average"}), (FrobeniusNN, {}),
                                          (NNFullModel, {})])
def test_the_baselines_through_the_interface_predict_as_on_feature_tables(table, cls, options):
    split = draws(CONFIG, 1)[0]
    train, test = table.subset(table.rows_of(split.train)), table.subset(table.rows_of(split.test))
    direct = cls(**options).fit(train).predict(test)  # the feature-table path the estimate and report use
    through = cls(**options).fit(ModelSet.from_table(train), train.dataset_sizes).predict(ModelSet.from_table(test))
    np.testing.assert_array_equal(direct, through)
    by_name = run_protocol(table, CONFIG, cls.name, **options)
    by_class = run_protocol(table, CONFIG, cls, **options)
    by_instance = run_protocol(table, CONFIG, cls(**options))
    for result in (by_name, by_class, by_instance):
        np.testing.assert_array_equal(result.standard.predictions, direct)
        assert result.method == cls.name and result.builtin and result.params == cls(**options).params()


def test_a_method_that_breaks_the_interface_is_one_clear_error(table):
    class Short(Spy):
        def predict(self, test):
            return [1.0]

    class Negative(Spy):
        def predict(self, test):
            return -np.ones(len(test))

    with pytest.raises(MethodError, match=f"1 predictions for {len(standard_split(CONFIG).test) * 6} test models"):
        run_protocol(table, CONFIG, Short, protocol="standard")
    with pytest.raises(MethodError, match="finite positive number"):
        run_protocol(table, CONFIG, Negative, protocol="standard")
    with pytest.raises(MethodError, match=r"Spy\(k=3\).*its options: none"):
        run_protocol(table, CONFIG, Spy, protocol="standard", k=3)
    with pytest.raises(MethodError, match="not a method"):
        run_protocol(table, CONFIG, object())


def test_methods_load_from_a_file_or_a_module(method_file, tmp_path):
    cls = load_method(f"{method_file}:NearestMeanNorm")
    assert cls.name == "NearestMeanNorm" and cls(power=2).params() == {"power": 2}
    assert load_method("lora_wise.baselines.dsire:DSiRe") is DSiRe
    for spec, says in [("nothing", "FILE.py:Class or module:Class"),
                       (f"{tmp_path}/missing.py:X", "no such file"),
                       (f"{method_file}:Missing", "has no class 'Missing'; its method classes: NearestMeanNorm"),
                       (f"{method_file}:NotAMethod", "no fit"),
                       ("no_such_module_xyz:Cls", "no module 'no_such_module_xyz'")]:
        with pytest.raises(MethodError, match=says):
            load_method(spec)


def test_evaluate_writes_a_record_that_an_independent_computation_confirms(synthetic_benchmark, method_file, tmp_path):
    out = tmp_path / "results.json"
    record = lora_wise.evaluate(f"{method_file}:NearestMeanNorm", synthetic_benchmark, CONFIG, params={"power": 2},
                                out=out)
    assert results.read(out) == record
    assert record["dataset"] == {"source": "lora-wise", "config": CONFIG, "checkpoint_step": get_config(CONFIG).checkpoint_step, "split_seed": 42,
                                 "fingerprint": record["dataset"]["fingerprint"]}
    assert record["method"] == {"name": "NearestMeanNorm", "class": "my_method.py:NearestMeanNorm",
                                "params": {"power": 2}}
    assert record["protocol"] == "paper" and len(record["draws"]) == 10
    truth = dict(zip(*[getattr(labels(synthetic_benchmark, CONFIG, s), a) for s in ("test",)
                       for a in ("model_ids",)], labels(synthetic_benchmark, CONFIG, "test").dataset_sizes.tolist()))
    table = feature_table(synthetic_benchmark, CONFIG)
    all_truth = dict(zip(table.model_ids, table.dataset_sizes.tolist()))
    for draw, split in zip(record["draws"], draws(CONFIG, 10)):
        assert draw["train_micro_datasets"] == list(split.train) and draw["test_micro_datasets"] == list(split.test)
        ids = list(draw["predictions"])
        assert sorted(int(m.split("/")[1][-2:]) for m in ids) == sorted(i for i in split.test for _ in range(6))
        expected = compute_metrics([draw["predictions"][m] for m in ids], [all_truth[m] for m in ids])
        assert draw["metrics"] == pytest.approx(expected)
    assert set(record["draws"][0]["predictions"]) == set(truth)  # draw 0: the standard split's test models
    # the same run through the protocol gives the same numbers
    direct = run_protocol(table, CONFIG, load_method(f"{method_file}:NearestMeanNorm"), protocol="paper", power=2)
    assert record["summary"]["mae"]["mean"] == pytest.approx(direct.mean("mae"))
    # the fingerprint is the shards' content: sha256 over the default view's files, split by split
    from lora_wise.data import local_data_files

    digest = hashlib.sha256()
    for split, files in sorted(local_data_files(synthetic_benchmark)[CONFIG].items()):
        for file in files:
            with open(file, "rb") as f:
                digest.update(f"{split}/{file.rsplit('/', 1)[1]} {hashlib.sha256(f.read()).hexdigest()}\n".encode())
    assert record["dataset"]["fingerprint"] == "sha256:" + digest.hexdigest()


def test_evaluate_takes_a_class_an_instance_or_a_baseline_name(synthetic_benchmark):
    by_name = lora_wise.evaluate("dsire", synthetic_benchmark, CONFIG, protocol="standard")
    by_instance = lora_wise.evaluate(DSiRe(), synthetic_benchmark, CONFIG, protocol="standard", name="DSiRe (mine)")
    assert by_name["method"]["class"] == "lora_wise.baselines.dsire:DSiRe" and by_name["method"]["name"] == "dsire"
    assert by_instance["method"]["name"] == "DSiRe (mine)"
    assert by_name["draws"][0]["predictions"] == by_instance["draws"][0]["predictions"]
    assert results.predictions_digest(by_name) == results.predictions_digest(by_instance)


def test_the_fingerprint_follows_the_content(tmp_path):
    from lora_wise.data import fingerprint
    from synthetic import model_rows, write_views

    from lora_wise.layout import render_card

    write_views(tmp_path, CONFIG, model_rows(CONFIG, micro_datasets=8))
    render_card(tmp_path)
    first = fingerprint(tmp_path, CONFIG)
    assert first == fingerprint(tmp_path, "mini_low_r8") and first.startswith("sha256:")
    write_views(tmp_path, CONFIG, model_rows(CONFIG, micro_datasets=8, noise=0.3))
    render_card(tmp_path)
    assert fingerprint(tmp_path, CONFIG) != first


def test_cli_evaluate_runs_a_file_method_and_writes_the_record(synthetic_benchmark, method_file, tmp_path, capsys):
    out = tmp_path / "r.json"
    code = main(["evaluate", f"{method_file}:NearestMeanNorm", str(synthetic_benchmark), CONFIG, "--param", "power=2",
                 "--out", str(out), "--name", "nearest norm"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    record = results.read(out)
    assert record["method"]["name"] == "nearest norm" and record["method"]["params"] == {"power": 2}
    mean = 100 * record["summary"]["accuracy"]["mean"]
    assert "paper protocol, 10 draws" in captured.out and f"{mean:.2f}" in captured.out  # printed in percent
    assert main(["evaluate", "dsire", str(synthetic_benchmark), CONFIG, "--protocol", "standard", "--json",
                 "--param", "k=3"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["method"]["params"]["k"] == 3 and len(printed["draws"]) == 1


@pytest.mark.parametrize("argv, says", [
    (["evaluate", "nothing", "{data}", CONFIG], "FILE.py:Class or module:Class"),
    (["evaluate", "dsire", "{data}", CONFIG, "--param", "k"], "write NAME=VALUE"),
    (["evaluate", "dsire", "{data}", CONFIG, "--param", "nope=1"], "its options: matrices, k, vote"),
    (["evaluate", "dsire", "{data}", "low_r8"], "has no config 'low_r8'"),
])
def test_cli_evaluate_errors_are_one_line(argv, says, synthetic_benchmark, capsys):
    code = main([a.replace("{data}", str(synthetic_benchmark)) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and says in err and "Traceback" not in err
    assert isinstance(MethodError("x"), LoRAWiSEError)


def test_a_subclass_of_method_gets_its_name_and_params():
    class Tuned(Method):
        name = "tuned"

        def __init__(self, alpha=0.5, layers="all"):
            self.alpha, self.layers = alpha, layers

    assert Tuned().name == "tuned" and Tuned(alpha=2).params() == {"alpha": 2, "layers": "all"}
    with pytest.raises(NotImplementedError):
        Tuned().predict(None)


def test_a_hub_dataset_is_fingerprinted_by_its_revision(monkeypatch):
    """The network boundary (HfApi) is replaced: the revision the Hub serves names the data."""
    import types

    import huggingface_hub

    from lora_wise.data import dataset_source, fingerprint

    class Api:
        def dataset_info(self, repo_id, **kwargs):
            return types.SimpleNamespace(sha="0123456789abcdef0123456789abcdef01234567", id=repo_id)

    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    value = fingerprint("me/LoRA-WiSE", CONFIG)
    assert value == "hub:me/LoRA-WiSE@0123456789abcdef0123456789abcdef01234567"
    assert dataset_source("me/LoRA-WiSE") == "me/LoRA-WiSE"
    record = json.loads(results.dumps(_record_with(dataset={"source": "me/LoRA-WiSE", "fingerprint": value})))
    assert record["dataset"]["fingerprint"] == value


def _record_with(dataset: dict) -> dict:
    split = draws(CONFIG, 1)[0]
    draw = {"draw": 0, "train_micro_datasets": list(split.train), "test_micro_datasets": list(split.test),
            "metrics": {"mae": 0.5, "mape": 0.1, "accuracy": 0.5}, "predictions": {"m": 2}}
    return results.new_record(dataset={"config": CONFIG, "checkpoint_step": get_config(CONFIG).checkpoint_step, **dataset},
                              method={"name": "x", "class": "x.py:X", "params": {}}, protocol="standard",
                              draws=[draw])
