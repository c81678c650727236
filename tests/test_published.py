"""import-official / export-official: the published LoRA-WiSE layout in and out.

The tests write folders in the published layout themselves (one nested-list
column per tensor in old diffusers naming, ``label``, ``name``, one ``train``
split), import them, run a baseline on the result, export back, and compare
every factor with the originals bit for bit.

Every folder read through ``datasets`` has a name no other test uses: datasets
5.2 keys its cache of a local folder by the folder's name and its card's
``configs:``, not by the files, so two folders of one name would share a cache.
"""

from __future__ import annotations

import fnmatch
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lora_wise.cli import main
from lora_wise.configs import CONCEPT101_MICRO_DATASETS, UnknownConfigError, get_config
from lora_wise.data import feature_table, iter_models
from lora_wise.published import export_official, import_official
from lora_wise.lora import LoRAFormatError
from lora_wise.protocol import run_protocol
from lora_wise.splits import standard_split

#: Real SD-1.5 module paths (shapes shrunk): self- and cross-attention, including to_out.0.
PUBLISHED_LAYERS = [
    ("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", 40, 40),
    ("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0", 40, 40),
    ("down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k", 40, 24),
    ("mid_block.attentions.0.transformer_blocks.0.attn2.to_v", 48, 24),
]


def published_columns() -> list[str]:
    """The tensor column names exactly as the published release spells them."""
    return [f"unet.{path}.lora.{part}.weight" for path, _, _ in PUBLISHED_LAYERS for part in ("down", "up")]


def published_models(subset: str, seed: int, noise: float = 0.03) -> list[dict]:
    """Rows of a published subset: label, name, and float32-valued factors (norm falls with size)."""
    cfg = get_config(subset)
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(cfg.num_micro_datasets):
        name = CONCEPT101_MICRO_DATASETS[index] if cfg.data_range == "low" else index + 1
        for size in cfg.dataset_sizes:
            row = {"label": size, "name": name}
            strength = 1.0 / (1.0 + np.log(size))
            for path, d, k in PUBLISHED_LAYERS:
                a = (rng.standard_normal((cfg.rank, k)) / np.sqrt(k)).astype(np.float32)
                b = (strength * (1 + noise * rng.standard_normal()) * rng.standard_normal((d, cfg.rank))
                     / np.sqrt(cfg.rank)).astype(np.float32)
                row[f"unet.{path}.lora.down.weight"] = a
                row[f"unet.{path}.lora.up.weight"] = b
            rows.append(row)
    order = rng.permutation(len(rows))  # the release's row order is not ours
    return [rows[i] for i in order]


def _plain(value):
    return value.tolist() if isinstance(value, np.ndarray) else value


def write_published(path: Path, rows: list[dict], files: int = 1) -> None:
    """Write rows as the release does: Python nested lists (float64) in Parquet."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for part, chunk in enumerate(np.array_split(np.arange(len(rows)), files)):
        columns = {key: [_plain(rows[i][key]) for i in chunk] for key in rows[0]}
        target = path if files == 1 else path.with_name(f"{path.stem}-{part:05d}-of-{files:05d}.parquet")
        pq.write_table(pa.table(columns), target)


def by_model(rows: list[dict]) -> dict[tuple[str, int], dict]:
    return {(str(r["name"]), r["label"]): r for r in rows}


def assert_same_factors(weights, original: dict) -> None:
    assert len(weights) == len(PUBLISHED_LAYERS)
    for path, _, _ in PUBLISHED_LAYERS:
        np.testing.assert_array_equal(weights[path].A, original[f"unet.{path}.lora.down.weight"])
        np.testing.assert_array_equal(weights[path].B, original[f"unet.{path}.lora.up.weight"])


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A folder in the published layout: low_8 declared in README YAML (two files), medium_16 under data/."""
    root = tmp_path_factory.mktemp("published") / "LoRA-WiSE"
    low, medium = published_models("low_8", seed=1), published_models("medium_16", seed=2)
    write_published(root / "parquet" / "low_8" / "train.parquet", low, files=2)
    write_published(root / "data" / "medium_16" / "train-00000-of-00001.parquet", medium)
    (root / "README.md").write_text(
        "---\nconfigs:\n- config_name: low_8\n  data_files:\n  - split: train\n"
        "    path: parquet/low_8/*.parquet\n---\n\n# published LoRA-WiSE (test copy)\n")
    return root, {"low_8": low, "medium_16": medium}


@pytest.fixture(scope="module")
def imported(published, tmp_path_factory):
    root, models = published
    out = tmp_path_factory.mktemp("imported") / "imported-release"
    results = import_official(root, out, progress=False)
    return out, results, models


def test_import_converts_every_model_exactly(imported):
    out, results, models = imported
    assert {r.subset: r.config for r in results} == {"low_8": "low_r8", "medium_16": "medium_r16"}
    for result in results:
        assert result.models == {"train": 15 * 6, "test": 35 * 6}, result.format()
    for config, subset in (("low_r8", "low_8"), ("medium_r16", "medium_16")):
        cfg, split = get_config(config), standard_split(config)
        originals = by_model(models[subset])
        seen = set()
        for meta, weights in iter_models(out, config):
            if cfg.data_range == "low":
                name = meta["micro_dataset"]
                assert meta["micro_dataset_index"] == CONCEPT101_MICRO_DATASETS.index(name)
            else:  # the release numbers medium/high micro-datasets 1..50
                name = meta["micro_dataset"]
                assert meta["micro_dataset_index"] == int(name) - 1
            key = (name, meta["dataset_size"])
            assert_same_factors(weights, originals[key])
            assert meta["split"] == split.side(meta["micro_dataset_index"])
            assert meta["model_id"] == f"{config}/{name}/n{meta['dataset_size']}"
            assert (meta["step"], meta["seed"], meta["rank"], meta["image_ids"]) == (
                cfg.checkpoint_step, 0, cfg.rank, [])
            assert meta["backbone"] == "sd1.5" and json.loads(meta["recipe"]) == json.loads(cfg.recipe.to_json())
            assert {layer.scale for layer in weights.values()} == {1.0}  # alpha = rank travels in metadata
            seen.add(key)
        assert seen == set(originals)


def test_baseline_runs_on_imported_release(imported):
    out, _, _ = imported
    table = feature_table(out, "low_r8")
    assert len(table) == 300 and len(table.layer_names) == len(PUBLISHED_LAYERS)
    result = run_protocol(table, "low_r8", "dsire")
    # labels stayed with their tensors: the synthetic size signal is recovered (chance: 17%)
    assert result.standard.metrics["accuracy"] >= 0.6, result.format()


def test_export_writes_published_layout_and_round_trips(imported, tmp_path):
    out, _, models = imported
    exported = export_official(out, "medium_r16", tmp_path / "medium-published", progress=False)
    assert exported.subset == "medium_16" and exported.models == 300
    files = sorted((tmp_path / "medium-published" / "data" / "medium_16").glob("train-*.parquet"))
    assert files and files == sorted(exported.files)
    schema = pq.read_schema(files[0])
    assert set(schema.names) == {"label", "name", *published_columns()}
    assert "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0.lora.down.weight" in schema.names

    import datasets

    loaded = datasets.load_dataset(str(tmp_path / "medium-published"), "medium_16", split="train")
    assert loaded.num_rows == 300 and sorted(set(loaded["name"])) == list(range(1, 51))
    first = loaded[0]
    original = by_model(models["medium_16"])[(str(first["name"]), first["label"])]
    column = published_columns()[1]
    np.testing.assert_array_equal(np.asarray(first[column], dtype=np.float32), original[column])

    back = tmp_path / "medium-round-trip"
    [result] = import_official(tmp_path / "medium-published", back, progress=False)
    assert result.config == "medium_r16"
    originals = by_model(models["medium_16"])
    count = 0
    for meta, weights in iter_models(back, "medium_r16"):
        assert_same_factors(weights, originals[(meta["micro_dataset"], meta["dataset_size"])])
        count += 1
    assert count == 300


def test_export_and_import_of_a_miniature_build_through_the_cli(synthetic_benchmark, tmp_path, capsys):
    assert main(["export-official", str(synthetic_benchmark), "mini_low_r8", str(tmp_path / "mini-published")]) == 0
    assert "exported 300 models of mini_low_r8" in capsys.readouterr().out
    table = pq.read_table(tmp_path / "mini-published" / "data" / "mini_low_r8")
    assert sorted(set(table.column("name").to_pylist())) == list(range(1, 51))  # no names: numbered 1..M

    # imported over a build of the same config: the release has one row per model, and the build's
    # snapshots view (other models) goes with the build's default view
    import shutil

    shutil.copytree(synthetic_benchmark, tmp_path / "mini-round-trip")
    assert (tmp_path / "mini-round-trip" / "data" / "mini_low_r8_snapshots").is_dir()
    assert main(["import-official", str(tmp_path / "mini-published"), str(tmp_path / "mini-round-trip")]) == 0
    assert "imported 300 models of mini_low_r8 as mini_low_r8" in capsys.readouterr().out
    card = (tmp_path / "mini-round-trip" / "README.md").read_text()
    assert "config_name: mini_low_r8\n" in card and "config_name: mini_low_r8_snapshots" not in card
    assert "config_name: mini_medium_r8_snapshots" in card  # the other config keeps both views
    assert not list((tmp_path / "mini-round-trip" / "data" / "mini_low_r8_snapshots").glob("*.parquet"))
    original = {(m["micro_dataset_index"], m["dataset_size"]): w for m, w in iter_models(synthetic_benchmark, "mini_low_r8")}
    back = {(m["micro_dataset_index"], m["dataset_size"]): (m, w) for m, w in iter_models(tmp_path / "mini-round-trip", "mini_low_r8")}
    assert set(back) == set(original)
    for key, (meta, weights) in back.items():
        assert list(weights) == list(original[key])
        for layer in weights:
            np.testing.assert_array_equal(weights[layer].A, original[key][layer].A)
            np.testing.assert_array_equal(weights[layer].B, original[key][layer].B)


def test_import_from_the_hub_materialises_only_the_asked_subset(published, tmp_path, monkeypatch):
    """The Hub path: huggingface_hub.HfApi (the network boundary) serves a local copy of the repo."""
    import huggingface_hub

    root, models = published
    remote = tmp_path / "remote"
    shutil.copytree(root, remote)
    asked = []

    class LocalHub:
        def hf_hub_download(self, repo_id, filename, repo_type=None, local_dir=None, **_):
            assert (repo_id, repo_type) == ("someone/LoRA-WiSE", "dataset")
            target = Path(local_dir) / filename
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(remote / filename, target)
            return str(target)

        def snapshot_download(self, repo_id, repo_type=None, allow_patterns=None, local_dir=None, **_):
            asked.append(allow_patterns)
            for path in remote.rglob("*"):
                rel = path.relative_to(remote).as_posix()
                if path.is_file() and any(fnmatch.fnmatch(rel, p) for p in allow_patterns):
                    (Path(local_dir) / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(path, Path(local_dir) / rel)
            return str(local_dir)

    monkeypatch.setattr(huggingface_hub, "HfApi", LocalHub)
    [result] = import_official("someone/LoRA-WiSE", tmp_path / "out", ["low_8"], progress=False)
    assert result.config == "low_r8" and sum(result.models.values()) == 300
    assert asked == [["README.md", "parquet/low_8/*.parquet"]]  # only the declared files of low_8


# --------------------------------------------------------------------------- errors


def _one_subset(tmp_path: Path, subset: str, rows: list[dict]) -> Path:
    write_published(tmp_path / "src" / subset / "train.parquet", rows)
    return tmp_path / "src"


def test_import_errors_name_the_problem(tmp_path, published):
    _, models = published
    rows = models["low_8"][:12]
    with pytest.raises(UnknownConfigError, match="low_8"):
        import_official(tmp_path, tmp_path / "out", ["low_9"], progress=False)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        import_official(tmp_path / "absent", tmp_path / "out", progress=False)

    no_label = [{k: v for k, v in r.items() if k != "label"} for r in rows]
    with pytest.raises(ValueError, match="lacks the column label"):
        import_official(_one_subset(tmp_path / "a", "low_8", no_label), tmp_path / "out", progress=False)
    no_tensors = [{"label": r["label"], "name": r["name"], "note": "x"} for r in rows]
    with pytest.raises(ValueError, match="no LoRA tensor columns"):
        import_official(_one_subset(tmp_path / "b", "low_8", no_tensors), tmp_path / "out", progress=False)
    unknown = [dict(rows[0], name="plushie_martian")]
    with pytest.raises(ValueError, match="plushie_martian.*not one of the 50 micro-datasets"):
        import_official(_one_subset(tmp_path / "c", "low_8", unknown), tmp_path / "out", progress=False)
    twice = [rows[0], dict(rows[0])]
    with pytest.raises(ValueError, match="duplicates"):
        import_official(_one_subset(tmp_path / "d", "low_8", twice), tmp_path / "out", progress=False)
    with pytest.raises(ValueError, match="rank 8 but low_r16 has rank 16"):
        import_official(_one_subset(tmp_path / "e", "low_16", rows), tmp_path / "out", progress=False)
    with pytest.raises(ValueError, match="holds no published subset"):
        import_official(tmp_path / "e" / "src" / "low_16", tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "data").exists()


def test_a_bad_row_leaves_the_previous_import_untouched(tmp_path, published, capsys):
    _, models = published
    rows = models["medium_16"]
    out = tmp_path / "kept-import"
    import_official(_one_subset(tmp_path / "good", "medium_16", rows), out, progress=False)
    before = {p: p.read_bytes() for p in sorted((out / "data").rglob("*.parquet"))}
    half = [dict(r) for r in rows]
    test_side = standard_split("medium_16").test
    # the last test-side row: the train split is already staged when it fails
    victim = max(i for i, r in enumerate(half) if r["name"] - 1 in test_side)
    del half[victim]["unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_v.lora.up.weight"]
    for r in half:  # the column must exist in the file: null it in one row only
        r.setdefault("unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_v.lora.up.weight", None)
    bad = _one_subset(tmp_path / "bad", "medium_16", half)
    code = main(["import-official", str(bad), str(out)])
    assert code == 2
    assert "is empty (null)" in capsys.readouterr().err
    after = {p: p.read_bytes() for p in sorted((out / "data").rglob("*.parquet"))}
    assert after == before
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging left behind

    nan = [dict(r) for r in rows[:6]]
    nan[3] = dict(nan[3], **{published_columns()[0]: np.full_like(nan[3][published_columns()[0]], np.nan)})
    with pytest.raises(LoRAFormatError, match="non-finite"):
        import_official(_one_subset(tmp_path / "nan", "medium_16", nan), out, progress=False)
    assert {p: p.read_bytes() for p in sorted((out / "data").rglob("*.parquet"))} == before
    assert len(feature_table(out, "medium_r16")) == 300  # the earlier import still loads whole


def test_import_notes_what_it_changed_or_skipped(tmp_path, published):
    _, models = published
    rows = [dict(r, source="civitai") for r in models["medium_16"][:6]]
    column = published_columns()[0]
    rows[0] = dict(rows[0], **{column: rows[0][column].astype(np.float64) + 1e-12})  # beyond float32
    [result] = import_official(_one_subset(tmp_path, "medium_16", rows), tmp_path / "noted-import", progress=False,
                               max_shard_bytes=50_000)  # ~2 models per shard
    assert len(result.files) >= 3 and all(p.stat().st_size < 50_000 for p in result.files)
    assert sum(1 for _ in iter_models(tmp_path / "noted-import", "medium_r16")) == 6
    notes = " | ".join(result.notes)
    assert "1 tensors held float64 values" in notes
    assert "ignored 1 column(s) that are not LoRA tensors: source" in notes
    assert "6 models; the full config has 300" in notes
    [weights] = [w for m, w in iter_models(tmp_path / "noted-import", "medium_r16")
                 if (m["micro_dataset"], m["dataset_size"]) == (str(rows[0]["name"]), rows[0]["label"])]
    layer = PUBLISHED_LAYERS[0][0]
    np.testing.assert_array_equal(weights[layer].A, rows[0][column].astype(np.float32))
