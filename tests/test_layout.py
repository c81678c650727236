"""The Hub layout's one owner: shard names and paths, and the card's ``configs:`` read and written through it."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest

from lora_wise.errors import DatasetLayoutError
from lora_wise.layout import (card_metadata, data_dir, is_shard_name, read_card_data_files, shard_digest, shard_name,
                              shard_pattern, size_category, split_view, views, write_card)


def test_shard_names_and_paths():
    name = shard_name("test", 3, "0123456789abcdef")
    assert name == "test-00003-0123456789abcdef.parquet" and is_shard_name(name)
    assert shard_digest(name) == "0123456789abcdef"
    assert is_shard_name("test-00003.parquet") and shard_digest("test-00003.parquet") is None  # older builds
    assert not is_shard_name("test-3.parquet") and not is_shard_name(".test-00003.parquet.tmp")
    assert not is_shard_name("test-00003-0123.parquet")
    assert shard_pattern("mini_low_r8", "train") == "data/mini_low_r8/train-*.parquet"
    assert data_dir("root", "mini_low_r8").as_posix() == "root/data/mini_low_r8"
    assert views("low_r8") == ("low_r8", "low_r8_snapshots")
    assert split_view("low_r8_snapshots") == ("low_r8", True) and split_view("low_r8") == ("low_r8", False)
    assert split_view("_snapshots") == ("_snapshots", False)


def test_a_shard_is_named_after_its_content(tmp_path):
    import pyarrow as pa

    from lora_wise.layout import file_digest, file_sha256, write_shard

    path, name = write_shard(pa.table({"x": [1, 2]}), tmp_path, "train", 0)
    assert path == tmp_path / name and file_digest(path) == shard_digest(name)
    assert file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    again, same = write_shard(pa.table({"x": [1, 2]}), tmp_path / "b", "train", 0)
    other, different = write_shard(pa.table({"x": [1, 3]}), tmp_path / "c", "train", 0)
    assert same == name and different != name  # equal bytes, equal name; new bytes, new name
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == [name]  # no temporary file left


@pytest.mark.parametrize("rows, category", [(0, "n<1K"), (999, "n<1K"), (1000, "1K<n<10K"), (54_321, "10K<n<100K"),
                                            (10**9, "n>100M")])
def test_size_categories(rows, category):
    assert size_category(rows) == category


def test_card_metadata_follows_the_backbones():
    from lora_wise.configs import BenchmarkConfig, get_config

    mini = card_metadata([get_config("mini_low_r8"), get_config("mini_medium_r8")], 240)
    assert mini["license"] == "apache-2.0" and "license_link" not in mini and "base_model" not in mini
    assert mini["task_categories"] == ["other"] and mini["size_categories"] == ["n<1K"]
    assert "arxiv:2406.19395" in mini["tags"]
    paper = card_metadata([get_config("low_r8"), get_config("medium_sd2_r32"), get_config("mini_low_r8")], 2000)
    assert paper["license"] == ["creativeml-openrail-m", "openrail++", "apache-2.0"]
    assert paper["base_model"] == ["stable-diffusion-v1-5/stable-diffusion-v1-5", "stabilityai/stable-diffusion-2"]
    other = dataclasses.replace(get_config("low_r8"), name="low_r8_sdxl", backbone="someone/sd-variant")
    assert isinstance(other, BenchmarkConfig)
    meta = card_metadata([other], 10)
    assert meta["license"] == "other" and meta["license_link"] == "https://huggingface.co/someone/sd-variant"
    assert meta["base_model"] == ["someone/sd-variant"]


def test_a_written_card_reads_back(tmp_path):
    files = {"b": {"train": [shard_pattern("b", "train")], "test": [shard_pattern("b", "test")]},
             "a": {"train": ["a/one.parquet", "a/two.parquet"]}}
    write_card(tmp_path, files, "# body\n", pretty_name="x", tags=["lora"])
    assert read_card_data_files(tmp_path) == files
    text = (tmp_path / "README.md").read_text()
    assert text.index("config_name: a") < text.index("config_name: b") and text.rstrip().endswith("# body")


@pytest.mark.parametrize("yaml_data_files,expected", [
    ("data/*.parquet", {"train": ["data/*.parquet"]}),
    ("[one.parquet, two.parquet]", {"train": ["one.parquet", "two.parquet"]}),
    ("{split: test, path: t/*.parquet}", {"test": ["t/*.parquet"]}),
    ("[{split: train, path: [a.parquet, b.parquet]}, {split: test, path: c.parquet}]",
     {"train": ["a.parquet", "b.parquet"], "test": ["c.parquet"]}),
])
def test_every_form_of_data_files_a_card_allows(tmp_path, yaml_data_files, expected):
    (tmp_path / "README.md").write_text(f"---\nconfigs:\n- config_name: low_8\n  data_files: {yaml_data_files}\n---\n")
    assert read_card_data_files(tmp_path) == {"low_8": expected}


def test_no_card_and_a_broken_card(tmp_path):
    assert read_card_data_files(tmp_path) == {}
    (tmp_path / "README.md").write_text("---\nconfigs: [unclosed\n---\n")
    with pytest.raises(DatasetLayoutError, match="YAML header does not parse"):
        read_card_data_files(tmp_path)
