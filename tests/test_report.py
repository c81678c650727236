"""The report's experiments agree with direct computations, and its figures exist."""

from __future__ import annotations

import re

import numpy as np
import pytest

from lora_wise.baselines import DSiRe
from lora_wise.data import feature_table
from lora_wise.features import FeatureTable
from lora_wise.protocol import run_protocol
from lora_wise.report import analyse, layer_family, write_report
from lora_wise.splits import standard_split


@pytest.fixture(scope="module")
def table(synthetic_benchmark):
    return feature_table(synthetic_benchmark, "mini_low_r8")


@pytest.fixture(scope="module")
def analysis(table):
    return analyse(table, "mini_low_r8", protocol="standard")


def only_layer(table: FeatureTable, layer: int) -> FeatureTable:
    return FeatureTable(layer_names=(table.layer_names[layer],), rank=table.rank,
                        sv={m: v[:, layer:layer + 1] for m, v in table.sv.items()},
                        norms={m: v[:, layer:layer + 1] for m, v in table.norms.items()},
                        model_ids=table.model_ids, dataset_sizes=table.dataset_sizes,
                        micro_dataset_indices=table.micro_dataset_indices, steps=table.steps)


def test_protocol_numbers_are_those_of_run_protocol(analysis, table):
    direct = run_protocol(table, "mini_low_r8", "frobenius-nn")
    assert analysis.results["frobenius-nn"].summary() == direct.summary()


def test_layer_accuracy_equals_a_dsire_fitted_on_that_layer_alone(analysis, table):
    split = standard_split("mini_low_r8")
    for layer in (0, len(table.layer_names) - 1):
        single = only_layer(table, layer)
        train, test = single.subset(single.rows_of(split.train)), single.subset(single.rows_of(split.test))
        accuracy = (DSiRe().fit(train).predict(test) == test.dataset_sizes).mean() * 100
        assert analysis.layer_accuracy[layer] == pytest.approx(accuracy)


def test_train_size_curve_ends_at_the_full_training_set(analysis, table):
    assert analysis.train_sizes == list(range(1, 16))  # 1 .. the config's 15 training micro-datasets
    full = run_protocol(table, "mini_low_r8", "dsire")
    assert analysis.train_size_accuracy[-1][0] == pytest.approx(full.mean("accuracy"))


def test_confusion_matrix_counts_every_test_model(analysis):
    matrix = np.array(analysis.confusion["matrix"])
    assert matrix.sum() == len(standard_split("mini_low_r8").test) * 6 and analysis.confusion["labels"] == [1, 2, 3, 4, 5, 6]
    accuracy = analysis.results["dsire"].standard.metrics["accuracy"]
    assert np.trace(matrix) / matrix.sum() == pytest.approx(accuracy)  # the metric's fraction


def test_norm_falls_with_size_in_the_family_table(analysis):
    for norms in analysis.family_norms.values():
        assert norms[0] > norms[-1]


def test_layer_family_names():
    assert layer_family("up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k") == "up attn2"
    assert layer_family("mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0") == "mid attn1"


def test_report_links_only_images_it_wrote(analysis, tmp_path):
    path = write_report([analysis], tmp_path, dataset="lora-wise", notes=["a note"])
    text = path.read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(images) == 4
    for image in images:
        assert (tmp_path / image).stat().st_size > 1000
    assert "| `mini_low_r8` | 1-6 | DSiRe |" in text and "0.36 ± 0.04" in text  # the paper's 1-6 row
    assert "- a note" in text
