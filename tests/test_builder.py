"""The builder end to end: real DreamBooth-LoRA fine-tunes of the tiny miniature backbone.

One module-scoped build of the tiny config (4 micro-datasets x 3 sizes, 2 snapshots
each) is read back through ``datasets.load_dataset`` and ``lora_wise``, loaded into a
diffusers pipeline, compared with direct calls of the trainer, and rebuilt.
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import yaml

from builder_fixtures import TEST_CONFIG, test_cfg, tiny_backbone  # noqa: F401 - fixtures

from lora_wise.builder.build import BuildOptions, build
from lora_wise.builder.micro_datasets import SyntheticSource, draw_image_ids, load_pixels
from lora_wise.builder.plan import plan_config
from lora_wise.builder.write import BUILD_DIR, BuildStateError
from lora_wise.schema import COLUMNS
from lora_wise.splits import standard_split

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def built(test_cfg, tiny_backbone, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("build") / "lora-wise"
    options = BuildOptions(out=out, backbone=str(tiny_backbone), progress=False)
    summary = build([TEST_CONFIG], options)
    return out, summary, options


@pytest.fixture(scope="module")
def backbone(tiny_backbone):  # noqa: F811
    from lora_wise.builder.train import load_backbone

    return load_backbone(str(tiny_backbone), device="cpu")


SNAPSHOTS = TEST_CONFIG + "_snapshots"


def _rows(out, split=None, config=SNAPSHOTS):
    """``load_dataset`` of the folder (every snapshot, by default), into a temporary cache."""
    import tempfile

    import datasets

    with tempfile.TemporaryDirectory(prefix="lw-ds-") as cache:
        ds = datasets.load_dataset(str(out), config, cache_dir=cache, keep_in_memory=True)
    return ds if split is None else ds[split]


def test_build_round_trips_through_load_dataset_and_lora_wise(built, test_cfg):  # noqa: F811
    import lora_wise

    out, summary, _ = built
    assert summary.models_built == 12 and summary.snapshots == 24 and summary.models_skipped == 0
    ds = _rows(out)
    assert set(ds) == {"train", "test"}
    split = standard_split(test_cfg)
    seen = set()
    for side in ("train", "test"):
        assert ds[side].column_names == list(COLUMNS)
        for row in ds[side]:
            assert split.side(row["micro_dataset_index"]) == side
            assert row["config"] == TEST_CONFIG and row["rank"] == 4 and row["backbone"] == "mini-sd"
            assert row["model_id"] == f"{TEST_CONFIG}/{row['micro_dataset']}/n{row['dataset_size']}"
            assert len(row["image_ids"]) == row["dataset_size"] == len(set(row["image_ids"]))
            assert all(i.startswith(row["micro_dataset"] + "/") for i in row["image_ids"])
            recipe = json.loads(row["recipe"])
            assert recipe["max_train_steps"] == 4 and recipe["build"]["precision"] == "fp32"
            weights = lora_wise.read_lora(row["lora"])
            assert weights.naming == "peft" and weights.rank == 4 and len(weights) == 32
            assert all(layer.alpha == 4 for layer in weights.values())
            assert "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k" in weights
            seen.add((row["model_id"], row["step"]))
    assert len(seen) == 24 == len(ds["train"]) + len(ds["test"])
    assert {s for _, s in seen} == {2, 4}
    # the default config: one row per model, its checkpoint snapshot, byte for byte
    default = _rows(out, config=TEST_CONFIG)
    for side in ("train", "test"):
        assert default[side].column_names == list(COLUMNS)
        checkpoints = [r for r in ds[side] if r["step"] == test_cfg.checkpoint_step]
        assert [r["model_id"] for r in default[side]] == [r["model_id"] for r in checkpoints]
        assert [r["lora"] for r in default[side]] == [r["lora"] for r in checkpoints]
    # the lora_wise readers see the same benchmark
    table = lora_wise.feature_table(str(out), TEST_CONFIG)
    assert len(table.model_ids) == 12 and sorted(set(table.dataset_sizes.tolist())) == [1, 2, 4]
    assert len(lora_wise.feature_table(str(out), TEST_CONFIG, step=None)) == 24


def test_card_lists_every_built_config_in_both_views_with_both_splits(built):
    out, _, _ = built
    text = (out / "README.md").read_text()
    meta = yaml.safe_load(text.split("---")[1])
    for view in (TEST_CONFIG, SNAPSHOTS):  # every shard by name, so a rebuild changes the list
        entry = next(c for c in meta["configs"] if c["config_name"] == view)
        listed = {f["split"]: f["path"] if isinstance(f["path"], list) else [f["path"]] for f in entry["data_files"]}
        assert listed == {split: sorted(p.relative_to(out).as_posix() for p in (out / "data" / view).glob(
            f"{split}-*.parquet")) for split in ("train", "test")}
    assert "Dataset Size Recovery from LoRA Weights" in text
    # a miniature-only build is lora-wise's own content: Apache-2.0, no Hub base model
    assert meta["license"] == "apache-2.0" and "base_model" not in meta
    assert "arxiv:2406.19395" in meta["tags"] and meta["size_categories"] == ["n<1K"]


def test_snapshot_loads_into_a_diffusers_pipeline(built, tiny_backbone, tmp_path):  # noqa: F811
    """The row's bytes are what `pipeline.load_lora_weights` accepts, tensor for tensor."""
    import torch
    from diffusers import StableDiffusionPipeline
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load

    out, _, _ = built
    row = next(r for r in _rows(out, "test") if r["step"] == 4 and r["dataset_size"] == 2)
    (tmp_path / "pytorch_lora_weights.safetensors").write_bytes(row["lora"])
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_backbone), safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)
    before = pipe("a photo of sks star", height=32, width=32, num_inference_steps=2, generator=generator,
                  output_type="np").images
    pipe.load_lora_weights(str(tmp_path), adapter_name="lw")
    saved = load(row["lora"])
    loaded = get_peft_model_state_dict(pipe.unet, adapter_name="lw")
    assert len(loaded) == len(saved) == 64
    for key, value in loaded.items():
        assert torch.equal(value, saved[f"unet.{key}"]), key
    generator = torch.Generator().manual_seed(0)
    after = pipe("a photo of sks star", height=32, width=32, num_inference_steps=2, generator=generator,
                 output_type="np").images
    assert after.shape == before.shape and not np.array_equal(after, before)


def test_rows_equal_a_direct_training_run(built, backbone, test_cfg):  # noqa: F811
    """The build's bytes are those of the trainer called by hand on the same images and seeds.

    The build trains on the batched trainer by default, and a config this small is one group
    (K = 64 on a CPU), so the hand-made call trains the whole plan as one group too.  The build
    encodes and fine-tunes the miniature on one CPU thread; so does this call (float sums, and
    so the last bits of latents and weights, depend on how many threads split them).
    """
    import torch

    from lora_wise.builder.batched import train_group

    out, _, _ = built
    source = SyntheticSource(32)
    micros = source.micro_datasets(test_cfg)
    group = plan_config(test_cfg, micros)
    planned = [p for p in group if p.unit.micro_dataset_index == 1][-1]
    assert planned.image_ids == tuple(draw_image_ids(micros[1], 4, 0))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        latents = [backbone.encode_images(load_pixels(source, p.image_ids, 32)) for p in group]
        snapshots = train_group(backbone, [p.job for p in group], latents)[group.index(planned)]
    finally:
        torch.set_num_threads(threads)
    rows = {r["step"]: r for r in _rows(out, "test") if r["model_id"] == planned.unit.model_id}
    assert [s.step for s in snapshots] == [2, 4]
    for snap in snapshots:
        assert rows[snap.step]["lora"] == snap.lora
        assert rows[snap.step]["image_ids"] == list(planned.image_ids)


def test_training_is_deterministic_and_seeded(backbone, test_cfg):  # noqa: F811
    from lora_wise.builder.train import TrainingJob, train_lora

    source = SyntheticSource(32)
    latents = backbone.encode_images(load_pixels(source, ["concept-00/0000", "concept-00/0001"], 32))
    job = TrainingJob("t", 7, "a photo of sks circle", 4, 4, test_cfg.recipe, (2, 4))
    first = [s.lora for s in train_lora(backbone, job, latents)]
    again = [s.lora for s in train_lora(backbone, job, latents)]
    other = [s.lora for s in train_lora(backbone, dataclasses.replace(job, seed=8), latents)]
    assert first == again
    assert first[0] != other[0] and first[1] != other[1]


def test_rng_protocol_matches_its_documentation(backbone):
    """draw_step and init_lora_weights draw exactly the documented torch calls, in order."""
    import torch

    from lora_wise.builder.train import ImageOrder, draw_step, init_lora_weights, lora_adapter, lora_modules

    g = torch.Generator().manual_seed(11)
    order = ImageOrder(3)
    steps = [draw_step(g, order, 2, (4, 8, 8), 1000, flip=True) for _ in range(3)]
    ref = torch.Generator().manual_seed(11)
    stream: list[int] = []
    for step in steps:
        while len(stream) < 2:
            stream += torch.randperm(3, generator=ref).tolist()
        assert step.indices.tolist() == stream[:2]
        stream = stream[2:]
        assert torch.equal(step.flips, torch.rand(2, generator=ref) < 0.5)
        assert torch.equal(step.latent_eps, torch.randn((2, 4, 8, 8), generator=ref))
        assert torch.equal(step.noise, torch.randn((2, 4, 8, 8), generator=ref))
        assert torch.equal(step.timesteps, torch.randint(0, 1000, (2,), generator=ref))

    lora_adapter(backbone, 4, 4, ("to_q", "to_k", "to_v", "to_out.0"))
    init_lora_weights(backbone.unet, 4, torch.Generator().manual_seed(5))
    ref = torch.Generator().manual_seed(5)
    for _, module in lora_modules(backbone.unet):
        a = module.lora_A["default"].weight
        assert torch.equal(a, torch.empty(a.shape).normal_(0.0, 0.25, generator=ref))
        assert not module.lora_B["default"].weight.any()


def test_v_prediction_backbone_trains_on_velocity(backbone, tiny_backbone, tmp_path, test_cfg):  # noqa: F811
    """SD 2's scheduler says v_prediction; the trainer reads it from the scheduler config."""
    from lora_wise.builder.train import TrainingJob, load_backbone, train_lora

    folder = tmp_path / "v-backbone"
    shutil.copytree(tiny_backbone, folder)
    config_path = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(config_path.read_text())
    config["prediction_type"] = "v_prediction"
    config_path.write_text(json.dumps(config))
    v_backbone = load_backbone(str(folder), device="cpu")
    assert v_backbone.prediction_type == "v_prediction" and backbone.prediction_type == "epsilon"
    source = SyntheticSource(32)
    pixels = load_pixels(source, ["concept-01/0003"], 32)
    job = TrainingJob("v", 0, "a photo of sks square", 4, 4, test_cfg.recipe, (4,))
    eps_bytes = train_lora(backbone, job, backbone.encode_images(pixels))[0].lora
    v_bytes = train_lora(v_backbone, job, v_backbone.encode_images(pixels))[0].lora
    assert eps_bytes != v_bytes


def test_rerun_skips_finished_units_and_keeps_the_data(built):
    out, _, options = built
    before = {p.relative_to(out): p.read_bytes() for p in (out / "data").rglob("*.parquet")}
    summary = build([TEST_CONFIG], options)
    assert summary.models_built == 0 and summary.models_skipped == 12
    after = {p.relative_to(out): p.read_bytes() for p in (out / "data").rglob("*.parquet")}
    assert before == after and len(before) == 4  # two views, two splits


def test_partial_build_grows_to_the_full_build(built, tmp_path):
    """--micro-datasets 2, then all 4: the same rows as one full build, each once, shards resealed."""
    out, _, options = built
    other = tmp_path / "partial"
    partial = dataclasses.replace(options, out=other, micro_datasets=2, max_shard_bytes=120_000)
    assert build([TEST_CONFIG], partial).models_built == 6
    assert len(_rows(other, "train")) + len(_rows(other, "test")) == 12
    assert build([TEST_CONFIG], dataclasses.replace(partial, micro_datasets=None)).models_built == 6
    full = {(r["model_id"], r["step"]): r["lora"] for s in ("train", "test") for r in _rows(out, s)}
    grown = [(r["model_id"], r["step"], r["lora"]) for s in ("train", "test") for r in _rows(other, s)]
    assert len(grown) == len({(m, s) for m, s, _ in grown}) == 24
    assert all(full[(m, s)] == lora for m, s, lora in grown)
    assert len(list((other / "data" / SNAPSHOTS).glob("*.parquet"))) > 2  # the size bound split shards
    assert not list((other / BUILD_DIR / TEST_CONFIG / "units").glob("*.parquet"))
    # the default view grew alongside, as one build would have sealed it
    assert sorted(r["model_id"] for r in _rows(other, "test", TEST_CONFIG)) == sorted(
        r["model_id"] for r in _rows(out, "test", TEST_CONFIG))


def _load_in_a_new_process(folder, config: str, hf_cache) -> dict[str, list]:
    """The README's plain call, ``datasets.load_dataset(folder, config)``, in a fresh interpreter with the
    given (shared) datasets cache: what a user does after a rebuild."""
    import json
    import os
    import subprocess
    import sys

    code = ("import datasets, json, sys\n"
            "ds = datasets.load_dataset(sys.argv[1], sys.argv[2])\n"
            "print(json.dumps({s: sorted(zip(ds[s]['model_id'], ds[s]['step'])) for s in ds}))")
    env = dict(os.environ, HF_DATASETS_CACHE=str(hf_cache))
    result = subprocess.run([sys.executable, "-c", code, folder.name, config], cwd=str(folder.parent), env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return {s: [tuple(x) for x in v] for s, v in json.loads(result.stdout.strip().splitlines()[-1]).items()}


def test_a_plain_load_dataset_after_a_rebuild_reads_the_new_rows(built, tiny_backbone, tmp_path):  # noqa: F811
    """`lora-wise build --micro-datasets 2`, then 4, into one folder; between and after, the plain
    `datasets.load_dataset(folder, config)` in a new process sharing one datasets cache: the shard
    names change with their content, so the second load is not the first one's cached rows."""
    from builder_fixtures import run_cli_subprocess

    out, hf_cache = tmp_path / "lora-wise", tmp_path / "hf-datasets"
    args = ["build", "--config", TEST_CONFIG, "--out", str(out), "--backbone", str(tiny_backbone), "--no-progress",
            "--threads", "1"]
    assert run_cli_subprocess(args + ["--micro-datasets", "2"]).returncode == 0
    before = {view: _load_in_a_new_process(out, view, hf_cache) for view in (TEST_CONFIG, SNAPSHOTS)}
    assert sum(map(len, before[TEST_CONFIG].values())) == 6 and sum(map(len, before[SNAPSHOTS].values())) == 12
    assert run_cli_subprocess(args + ["--micro-datasets", "4"]).returncode == 0
    for view in (TEST_CONFIG, SNAPSHOTS):
        after = _load_in_a_new_process(out, view, hf_cache)
        expected = {s: sorted((r["model_id"], r["step"]) for r in rows) for s, rows in _rows(out, None, view).items()}
        assert after == expected and after != before[view]
    assert sum(map(len, after.values())) == 24


def test_a_folder_built_by_an_older_version_is_migrated_to_both_views(built, tmp_path):
    """Manifest version 1 kept every snapshot in data/<config>/ (names without a digest): a build
    opening such a folder unseals its rows into units and seals them into both views, which then
    equal a fresh build's byte for byte, with nothing retrained."""
    out, _, options = built
    old = tmp_path / "old"
    shutil.copytree(out, old)
    store = old / BUILD_DIR / TEST_CONFIG
    manifest = json.loads((store / "manifest.json").read_text())
    shutil.rmtree(old / "data" / TEST_CONFIG)
    shards = {}
    for split in ("train", "test"):
        names = []
        for i, path in enumerate(sorted((old / "data" / SNAPSHOTS).glob(f"{split}-*.parquet"))):
            names.append(f"{split}-{i:05d}.parquet")
            (old / "data" / TEST_CONFIG).mkdir(parents=True, exist_ok=True)
            path.rename(old / "data" / TEST_CONFIG / names[-1])
        shards[split] = names
    shutil.rmtree(old / "data" / SNAPSHOTS)
    (store / "manifest.json").write_text(json.dumps({
        "version": 1, "config": TEST_CONFIG, "fingerprint": manifest["fingerprint"], "units": manifest["units"],
        "shards": shards, "next_index": {s: len(n) for s, n in shards.items()}, "seal": 3}))
    summary = build([TEST_CONFIG], dataclasses.replace(options, out=old))
    assert summary.models_built == 0 and summary.models_skipped == 12
    fresh = {p.relative_to(out): p.read_bytes() for p in (out / "data").rglob("*.parquet")}
    migrated = {p.relative_to(old): p.read_bytes() for p in (old / "data").rglob("*.parquet")}
    assert migrated == fresh
    assert json.loads((store / "manifest.json").read_text())["version"] == 2
    assert not list((store / "units").glob("*.parquet"))


def test_resuming_with_another_backbone_is_refused(built, tmp_path, tiny_backbone):  # noqa: F811
    out, _, options = built
    other_backbone = tmp_path / "other-backbone"
    shutil.copytree(tiny_backbone, other_backbone)
    (other_backbone / "lora_wise_backbone.json").unlink()
    with pytest.raises(BuildStateError, match="different backbone"):
        build([TEST_CONFIG], dataclasses.replace(options, backbone=str(other_backbone)))


def test_build_from_an_image_folder(tiny_backbone, test_cfg, tmp_path):  # noqa: F811
    """Folder micro-datasets: names from the sub-folders, image ids are relative paths."""
    from PIL import Image

    from lora_wise.builder.synthetic_images import concept_image

    images = tmp_path / "images"
    for c, name in enumerate(["pet_cat7", "plushie_panda", "toy_unicorn", "wearable_shoes2", "zz_extra"]):
        (images / name).mkdir(parents=True)
        for j in range(5):
            Image.fromarray(concept_image(c, j, 48)).save(images / name / f"img{j}.png")
    out = tmp_path / "out"
    options = BuildOptions(out=out, backbone=str(tiny_backbone), images=str(images), micro_datasets=2,
                           progress=False)
    assert build([TEST_CONFIG], options).models_built == 6
    rows = [r for s in ("train", "test") for r in _rows(out, s)]
    assert {r["micro_dataset"] for r in rows} == {"pet_cat7", "plushie_panda"}
    assert all(i.split("/")[0] == r["micro_dataset"] and i.endswith(".png") for r in rows for i in r["image_ids"])
    assert json.loads(rows[0]["recipe"])["build"]["images"] == "folder:images"
