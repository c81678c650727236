"""Loading a LoRA-WiSE folder, streaming features, and the protocol runner on it."""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest
from datasets import load_dataset

from lora_wise.configs import UnknownConfigError, get_config
from lora_wise.data import DatasetLayoutError, feature_table, labels, load_benchmark
from lora_wise.features import extract
from lora_wise.lora import read_lora
from lora_wise.protocol import run_protocol, write_predictions
from lora_wise.splits import standard_split
from synthetic import model_rows, synthetic_lora, write_views


def test_load_dataset_round_trip_from_the_parent_folder(synthetic_benchmark, monkeypatch):
    monkeypatch.chdir(synthetic_benchmark.parent)
    ds = load_dataset("lora-wise", "mini_low_r8", cache_dir=str(synthetic_benchmark.parent / "hf"))
    assert set(ds) == {"train", "test"}
    cfg = get_config("mini_low_r8")
    split = standard_split(cfg)
    assert {r for r in ds["train"]["micro_dataset_index"]} == set(split.train)
    assert {r for r in ds["test"]["micro_dataset_index"]} == set(split.test)
    row = ds["test"][0]
    assert isinstance(row["lora"], bytes)
    # the bytes read back are the bytes written
    expected = synthetic_lora(row["dataset_size"], row["seed"], cfg.rank)
    assert row["lora"] == expected
    assert read_lora(row).naming == "peft"


def test_labels_and_feature_table(synthetic_benchmark):
    test = labels(synthetic_benchmark, "mini_low_r8", "test")
    assert len(test.model_ids) == len(standard_split("mini_low_r8").test) * 6 and len(set(test.model_ids)) == len(test.model_ids)
    table = feature_table(synthetic_benchmark, "mini_low_r8")
    assert len(table) == 50 * 6 and table.sv["BA"].shape[1:] == (8, 8)
    row = table.model_ids.index(test.model_ids[0])
    weights = read_lora(synthetic_lora(int(table.dataset_sizes[row]), 0, 8))  # any model: shapes
    assert table.layer_names == tuple(weights)
    # features in the table are the features of the stored LoRA
    ds = load_benchmark(synthetic_benchmark, "mini_low_r8", "test")
    stored = next(r for r in ds if r["model_id"] == test.model_ids[0])
    np.testing.assert_array_equal(table.sv["BA"][row], extract(read_lora(stored["lora"]), 8).sv["BA"])


def test_aliases_unknown_configs_and_steps(synthetic_benchmark, tmp_path):
    with pytest.raises(UnknownConfigError, match="has no config 'medium_r32'.*mini_low_r8"):
        load_benchmark(synthetic_benchmark, "medium_32")
    with pytest.raises(UnknownConfigError, match="unknown config 'mini_lo'"):
        load_benchmark(synthetic_benchmark, "mini_lo")
    with pytest.raises(DatasetLayoutError, match=f"no snapshots at step 7.*{get_config('mini_low_r8').checkpoint_step}"):
        labels(synthetic_benchmark, "mini_low_r8", "test", step=7)
    with pytest.raises(DatasetLayoutError, match="give a step number"):
        labels(synthetic_benchmark, "mini_low_r8", "test", step="latest")
    with pytest.raises(DatasetLayoutError, match="unknown split"):
        load_benchmark(synthetic_benchmark, "mini_low_r8", "validation")
    with pytest.raises(DatasetLayoutError, match="not a LoRA-WiSE dataset"):
        load_benchmark(tmp_path, "mini_low_r8")


def test_one_row_per_model_by_default_and_every_snapshot_in_the_snapshots_config(tmp_path, monkeypatch):
    from lora_wise.layout import render_card

    cfg = get_config("mini_low_r8")
    write_views(tmp_path, "mini_low_r8", model_rows("mini_low_r8", micro_datasets=8, steps=cfg.snapshot_steps))
    render_card(tmp_path)
    # the plain datasets call: the default config is one row per model, at the checkpoint
    monkeypatch.chdir(tmp_path.parent)
    default = load_dataset(tmp_path.name, "mini_low_r8", cache_dir=str(tmp_path.parent / "hf"))
    snapshots = load_dataset(tmp_path.name, "mini_low_r8_snapshots", cache_dir=str(tmp_path.parent / "hf"))
    for split in ("train", "test"):
        assert len(set(default[split]["model_id"])) == len(default[split])
        assert set(default[split]["step"]) == {cfg.checkpoint_step}
        assert len(snapshots[split]) == len(cfg.snapshot_steps) * len(default[split])
        assert sorted(set(snapshots[split]["step"])) == list(cfg.snapshot_steps)
    assert default["test"][0]["step"] == cfg.checkpoint_step  # the README's first row is a checkpoint
    # the readers pick the view from the step
    checkpoint = feature_table(tmp_path, "mini_low_r8")
    assert set(checkpoint.steps.tolist()) == {cfg.checkpoint_step}
    assert len(feature_table(tmp_path, "mini_low_r8", step=cfg.checkpoint_step)) == len(checkpoint)
    other = next(s for s in cfg.snapshot_steps if s != cfg.checkpoint_step)
    assert set(feature_table(tmp_path, "mini_low_r8", step=other).steps.tolist()) == {other}
    for every in (None, "all"):
        table = feature_table(tmp_path, "mini_low_r8", step=every)
        assert len(table) == len(cfg.snapshot_steps) * len(checkpoint) and set(table.steps.tolist()) == set(cfg.snapshot_steps)
    assert labels(tmp_path, "mini_low_r8", "test", step=other).model_ids == labels(tmp_path, "mini_low_r8",
                                                                                 "test").model_ids
    assert len(load_benchmark(tmp_path, "mini_low_r8_snapshots", "test")) == len(cfg.snapshot_steps) * len(labels(tmp_path, "mini_low_r8",
                                                                                         "test").model_ids)
    # the features of a checkpoint row are those of the same snapshot in the snapshots config
    everything = feature_table(tmp_path, "mini_low_r8", step=None)
    row = next(i for i in range(len(everything)) if everything.steps[i] == cfg.checkpoint_step
               and everything.model_ids[i] == checkpoint.model_ids[0])
    np.testing.assert_array_equal(everything.sv["BA"][row], checkpoint.sv["BA"][0])


def test_view_names_resolve_aliases():
    from lora_wise.data import view_name

    assert view_name("medium_32") == "medium_r32" and view_name("medium_32_snapshots") == "medium_r32_snapshots"
    assert view_name("mini_low_r8_snapshots") == "mini_low_r8_snapshots"
    with pytest.raises(UnknownConfigError, match="unknown config 'nope'"):
        view_name("nope_snapshots")


def test_every_reader_decides_a_dataset_argument_through_locate(synthetic_benchmark, tmp_path):
    """A folder lists its configs once whatever views it has; a file or a non-id is refused by every reader,
    the same way, before anything is read."""
    from lora_wise.data import dataset_configs, dataset_source, fingerprint

    assert dataset_configs(synthetic_benchmark) == ["mini_low_r8", "mini_medium_r8"]
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    readers = [dataset_configs, dataset_source, lambda where: fingerprint(where, "mini_low_r8"),
               lambda where: labels(where, "mini_low_r8"), lambda where: load_benchmark(where, "mini_low_r8")]
    for read in readers:
        with pytest.raises(DatasetLayoutError, match="is a file, not a LoRA-WiSE dataset folder"):
            read(a_file)
        with pytest.raises(FileNotFoundError, match="no such folder, and not a Hub dataset repo id"):
            read(tmp_path / "no-such-folder")


def test_a_dataset_without_snapshots_answers_every_step_from_its_one_view(tmp_path):
    from lora_wise.layout import render_card, write_shards

    for split, rows in model_rows("mini_low_r8", micro_datasets=8).items():
        write_shards(rows, tmp_path, "mini_low_r8", split)  # as import-official writes the release
    render_card(tmp_path)
    assert len(feature_table(tmp_path, "mini_low_r8", step=None)) == len(feature_table(tmp_path, "mini_low_r8"))
    with pytest.raises(DatasetLayoutError, match="no snapshots at step 50"):
        labels(tmp_path, "mini_low_r8", "test", step=50)
    with pytest.raises(UnknownConfigError, match="no config 'mini_low_r8_snapshots'.*imported release"):
        load_benchmark(tmp_path, "mini_low_r8_snapshots")


def test_protocol_standard_and_paper(synthetic_benchmark, tmp_path):
    table = feature_table(synthetic_benchmark, "mini_low_r8")
    standard = run_protocol(table, "mini_low_r8", "dsire")
    paper = run_protocol(table, "mini_low_r8", "dsire", protocol="paper")
    assert len(standard.draws) == 1 and len(paper.draws) == 10
    assert paper.draws[0].metrics == standard.draws[0].metrics
    assert paper.std("mae") > 0 and 0 < paper.mean("accuracy") <= 1  # a fraction, as evaluate's metrics
    # the synthetic norm falls with size, so the baseline is far above chance (1/6)
    assert standard.standard.metrics["accuracy"] > 0.35
    # test predictions cover exactly the test models of the standard split
    test = labels(synthetic_benchmark, "mini_low_r8", "test")
    assert sorted(standard.standard.model_ids) == sorted(test.model_ids)
    path = write_predictions(standard.standard, tmp_path / "pred.csv")
    rows = list(csv.DictReader(path.open()))
    assert rows[0].keys() == {"model_id", "prediction"} and len(rows) == len(test.model_ids)
    assert "paper" in standard.format() and "miniature" in standard.format()


def test_fewer_training_micro_datasets(synthetic_benchmark):
    table = feature_table(synthetic_benchmark, "mini_medium_r8")
    one = run_protocol(table, "mini_medium_r8", "dsire", protocol="paper", train_micro_datasets=1)
    assert all(len(set(table.micro_dataset_indices[table.rows_of(d.split.train[:1])])) == 1 for d in one.draws)
    assert one.mean("accuracy") > 1 / 6


def test_protocol_refuses_a_draw_without_models(synthetic_benchmark, tmp_path):
    from lora_wise.layout import render_card, write_shards

    split = standard_split("mini_low_r8")
    only_test = [i for i in range(20) if i in split.test]
    rows = model_rows("mini_low_r8", micro_datasets=20)["test"]
    write_shards([r for r in rows if r["micro_dataset_index"] in only_test], tmp_path, "mini_low_r8", "test")
    render_card(tmp_path)
    table = feature_table(tmp_path, "mini_low_r8", splits=("test",))
    with pytest.raises(ValueError, match="no train models.*build more micro-datasets"):
        run_protocol(table, "mini_low_r8")


def test_a_rebuilt_folder_and_a_namesake_folder_are_not_read_from_a_stale_cache(tmp_path):
    """datasets keys load_dataset(folder, config) on the folder's name and card; we must not."""
    from lora_wise.layout import render_card

    def build(root, micro_datasets):
        write_views(root, "mini_low_r8", model_rows("mini_low_r8", micro_datasets=micro_datasets))
        render_card(root)

    first = tmp_path / "a" / "lora-wise"
    build(first, 4)
    assert len(labels(first, "mini_low_r8", "test").model_ids) == \
        len([i for i in range(4) if i in standard_split("mini_low_r8").test]) * 6
    build(first, 20)  # rebuilt in place, same card
    assert len(labels(first, "mini_low_r8", "test").model_ids) == \
        len([i for i in range(20) if i in standard_split("mini_low_r8").test]) * 6
    namesake = tmp_path / "b" / "lora-wise"
    build(namesake, 8)
    expected = len([i for i in range(8) if i in standard_split("mini_low_r8").test]) * 6
    assert len(labels(namesake, "mini_low_r8", "test").model_ids) == expected


def test_labels_read_only_label_columns_streaming_or_not(synthetic_benchmark):
    streamed = labels(synthetic_benchmark, "mini_medium_r8", "train", streaming=True)
    loaded = labels(synthetic_benchmark, "mini_medium_r8", "train", streaming=False)
    assert streamed.model_ids == loaded.model_ids and len(loaded.model_ids) == 15 * 6
    assert np.array_equal(streamed.dataset_sizes, loaded.dataset_sizes)
    ds = load_benchmark(synthetic_benchmark, "mini_medium_r8", "train", columns=["model_id", "step"])
    assert ds.column_names == ["model_id", "step"]


@pytest.mark.parametrize("config, method, params, step, expected", [  # expected: the row's MAE
    ("medium_r32", "dsire", {}, 1200, 1.48),
    ("medium_r32", "dsire", {"matrices": "BA+B+A"}, 1200, 1.48),  # all three, in any order
    ("medium_r32", "dsire", {"matrices": "BA"}, 1200, 1.61),
    ("medium_r32", "dsire", {"vote": "average"}, 1200, 3.57),
    ("medium_r32", "dsire", {"classifier": "lda"}, 1200, 2.89),
    ("medium_r32", "dsire", {"classifier": "ridge"}, 1200, 8.05),
    ("medium_r16", "dsire", {}, 300, 2.43),
    ("medium_sd2_r32", "frobenius-nn", {}, 1200, 2.95),
    ("medium_r32", "dsire", {}, 300, None),  # no Table 8 row for rank 32
    ("medium_r32", "dsire", {"k": 3}, 1200, None),
    ("medium_r32", "dsire", {"normalize": "none"}, 1200, None),
    ("medium_r32", "dsire", {"vote": "average", "matrices": "A"}, 1200, None),
    ("medium_r32", "frobenius-nn", {"vote": "average"}, 1200, None),
    ("mini_medium_r8", "dsire", {}, 300, None),
])
def test_the_paper_figure_beside_a_run_is_the_row_of_that_exact_experiment(config, method, params, step, expected):
    from lora_wise.paper import paper_result
    from lora_wise.protocol import paper_row_key

    cfg = get_config(config)
    key = paper_row_key(method, params, cfg, step)
    row = paper_result(cfg, *key) if key else None
    assert (row.mae if row else None) == expected  # the MAE tells the paper's rows apart
