"""The Hub layout's one owner: shard names and paths, and the card's ``configs:`` read and written through it."""

from __future__ import annotations

import pytest

from lora_wise.errors import DatasetLayoutError
from lora_wise.layout import (data_dir, is_shard_name, read_card_data_files, shard_name, shard_pattern,
                              write_card)


def test_shard_names_and_paths():
    assert shard_name("test", 3) == "test-00003.parquet" and is_shard_name("test-00003.parquet")
    assert not is_shard_name("test-3.parquet") and not is_shard_name(".test-00003.parquet.tmp")
    assert shard_pattern("mini_low_r8", "train") == "data/mini_low_r8/train-*.parquet"
    assert data_dir("root", "mini_low_r8").as_posix() == "root/data/mini_low_r8"


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
