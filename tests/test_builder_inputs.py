"""Micro-datasets and bad input: every problem is a clear error before any training starts.

No model is trained here: the checks run in the planning phase of a build, so
these tests pass a decoy backbone folder that cannot load -- a build that reached
training would fail on it instead of on the problem under test.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

from builder_fixtures import TEST_CONFIG, test_cfg  # noqa: F401 - fixture

from lora_wise.builder.build import BuildOptions, build
from lora_wise.builder.micro_datasets import (FolderSource, HFImageSource, MicroDataset, MicroDatasetError, SyntheticSource,
                                    draw_image_ids, load_pixels, preprocess)
from lora_wise.builder.synthetic_images import (KINDS, MAX_CLASSES, PRETRAIN_CLASSES, TEXTURES, Appearance,
                                                 class_word, concept_image, generic_batch, object_appearance)
from lora_wise.builder.write import BUILD_DIR
from lora_wise.cli import main


def _folder(root, counts: dict[str, int], size=40):
    for c, (name, count) in enumerate(counts.items()):
        (root / name).mkdir(parents=True)
        for j in range(count):
            Image.fromarray(concept_image(c, j, size)).save(root / name / f"{j:03d}.png")
    return root


def _build_expecting(tmp_path, match: str, **options):
    """Build the tiny config expecting an error; its backbone folder is a decoy that cannot load,
    so an error about anything else proves the check ran before training."""
    out = tmp_path / "out"
    decoy = tmp_path / "never-loaded"
    decoy.mkdir(exist_ok=True)
    (decoy / "model_index.json").write_text("{}")
    opts = BuildOptions(out=out, backbone=str(decoy), progress=False, **options)
    with pytest.raises(Exception, match=match) as info:
        build([TEST_CONFIG], opts)
    assert not (out / BUILD_DIR).exists() or not list((out / BUILD_DIR).rglob("units/*.parquet"))
    return info.value


def test_synthetic_concepts_are_deterministic_distinct_and_plentiful():
    for kind in KINDS:
        assert np.array_equal(concept_image(3, 17, 32, kind), concept_image(3, 17, 32, kind))
    digests = {hashlib.sha1(concept_image(5, j, 16).tobytes()).hexdigest() for j in range(1000)}
    assert len(digests) == 1000  # 1000 distinct images for the high range
    with pytest.raises(ValueError, match="unknown micro-dataset kind"):
        concept_image(0, 0, 16, "photo")


def test_class_words_are_distinct_pseudo_words():
    words = [class_word(i) for i in range(MAX_CLASSES)]
    assert len(set(words)) == MAX_CLASSES and all(w.isalpha() and len(w) == 6 for w in words)
    assert class_word(0) != class_word(1)
    with pytest.raises(ValueError, match="outside"):
        class_word(MAX_CLASSES)


def test_objects_keep_their_look_classes_change_theirs_and_drawings_have_plain_backgrounds():
    # a drawing: one object on a plain background -- its corners are one colour (up to pixel noise)
    drawing = concept_image(7, 0, 32, "drawing").astype(float)
    assert drawing[:3, :3].reshape(-1, 3).std(axis=0).max() < 15
    scene = concept_image(7, 0, 32, "class").astype(float)
    assert scene[:, :].reshape(-1, 3).std(axis=0).mean() > drawing[:3, :3].reshape(-1, 3).std(axis=0).mean()
    # the particular object keeps its appearance; a class draws one per image
    look = object_appearance(7)
    assert look == object_appearance(7) and look != object_appearance(8)
    rng = np.random.default_rng(0)
    assert len({Appearance.draw(rng).texture for _ in range(40)}) == len(TEXTURES)
    relit = {look.relit(np.random.default_rng(k)) for k in range(5)}
    assert {r.texture for r in relit} == {look.texture} and len({r.colour for r in relit}) == 5


def test_pretraining_scenes_are_captioned_with_their_class_word():
    images, captions = generic_batch(16, 24, np.random.default_rng(3))
    assert images.shape == (16, 24, 24, 3) and images.dtype == np.uint8
    known = {class_word(i) for i in range(PRETRAIN_CLASSES)}
    assert all(c.startswith("a photo of a ") and c.removeprefix("a photo of a ") in known for c in captions)


def test_image_draws_are_random_without_replacement_and_reproducible():
    micro = MicroDataset(0, "concept-00", "circle", tuple(f"concept-00/{j:04d}" for j in range(1000)))
    draw = draw_image_ids(micro, 50, 0)
    assert len(set(draw)) == 50 and draw == draw_image_ids(micro, 50, 0)
    assert draw != draw_image_ids(micro, 50, 1) and draw[:10] != [f"concept-00/{j:04d}" for j in range(10)]
    with pytest.raises(MicroDatasetError, match="too few"):
        draw_image_ids(micro, 1001, 0)


def test_preprocessing_resizes_the_short_side_and_centre_crops():
    wide = Image.fromarray(np.concatenate([np.zeros((20, 20, 3), np.uint8), np.full((20, 20, 3), 255, np.uint8),
                                           np.zeros((20, 20, 3), np.uint8)], axis=1))
    pixels = preprocess(wide, 10)
    assert pixels.shape == (3, 10, 10) and pixels.dtype == np.float32
    # 60 x 20 -> 30 x 10 -> the middle 10 columns: the white third, scaled to [-1, 1] (edges blend bilinearly)
    assert np.allclose(pixels[:, :, 1:-1], 1.0) and (pixels[:, :, [0, -1]] > 0.5).all()


def test_folder_source_names_ids_and_class_words(tmp_path):
    source = FolderSource(_folder(tmp_path / "imgs", {"pet_cat7": 3, "scene_barn": 2}))
    assert source.names() == ["pet_cat7", "scene_barn"]
    assert source.image_ids("scene_barn") == ["scene_barn/000.png", "scene_barn/001.png"]
    assert source.class_word("pet_cat7") == "pet cat"
    assert load_pixels(source, ["pet_cat7/002.png"], 16).shape == (1, 3, 16, 16)


def test_datasets_image_source_groups_by_label(tmp_path):
    import datasets

    images = [Image.fromarray(concept_image(i % 3, i, 24)) for i in range(9)]
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=["tench, Tinca tinca", "goldfish", "shark"])})
    ds = datasets.Dataset.from_dict({"image": images, "label": [i % 3 for i in range(9)]}, features=features)
    source = HFImageSource(ds)
    assert source.names() == ["tench, Tinca tinca", "goldfish", "shark"]
    assert source.image_ids("goldfish") == ["goldfish/1", "goldfish/4", "goldfish/7"]
    assert source.class_word("tench, Tinca tinca") == "tench"
    pixels = load_pixels(source, ["goldfish/4"], 24)
    assert np.allclose(pixels[0], preprocess(images[4], 24))
    with pytest.raises(MicroDatasetError, match="no column 'klass'"):
        HFImageSource(ds, label_column="klass")


def test_too_few_micro_datasets(tmp_path, test_cfg):  # noqa: F811
    images = _folder(tmp_path / "imgs", {"a": 4, "b": 4})
    error = _build_expecting(tmp_path, "holds 2 micro-dataset", images=str(images))
    assert "--micro-datasets 2" in str(error)


def test_empty_concept_folder(tmp_path, test_cfg):  # noqa: F811
    images = _folder(tmp_path / "imgs", {"a": 4, "b": 4, "c": 0, "d": 4})
    _build_expecting(tmp_path, "micro-dataset 'c' is empty", images=str(images))


def test_too_few_images_for_the_largest_size(tmp_path, test_cfg):  # noqa: F811
    images = _folder(tmp_path / "imgs", {"a": 4, "b": 3, "c": 4, "d": 4})
    _build_expecting(tmp_path, "'b' has 3 images, fewer than the largest dataset size 4", images=str(images))


def test_unreadable_image_is_named_before_training(tmp_path, test_cfg):  # noqa: F811
    images = _folder(tmp_path / "imgs", {"a": 4, "b": 4, "c": 4, "d": 4})
    for j in range(4):  # every image of b is broken, so whatever is drawn hits one
        (images / "b" / f"{j:03d}.png").write_bytes(b"not a png at all")
    error = _build_expecting(tmp_path, r"image 'b/00\d\.png' .* cannot be read", images=str(images))
    assert "Nothing was trained" in str(error)


def test_folder_without_sub_folders_and_missing_folder(tmp_path, test_cfg):  # noqa: F811
    (tmp_path / "flat").mkdir()
    Image.fromarray(concept_image(0, 0, 16)).save(tmp_path / "flat" / "x.png")
    _build_expecting(tmp_path, "has no sub-folders", images=str(tmp_path / "flat"))
    _build_expecting(tmp_path, "does not exist", images=str(tmp_path / "nowhere"))


def test_missing_backbone_folder(tmp_path, test_cfg):  # noqa: F811
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match="backbone folder .*missing-backbone does not exist"):
        build([TEST_CONFIG], BuildOptions(out=out, backbone=str(tmp_path / "missing-backbone"), progress=False))
    not_a_pipeline = tmp_path / "not-a-pipeline"
    not_a_pipeline.mkdir()
    with pytest.raises(FileNotFoundError, match="no model_index.json"):
        build([TEST_CONFIG], BuildOptions(out=out, backbone=str(not_a_pipeline), progress=False))


def test_cli_errors_are_one_line_with_the_fix(tmp_path, capsys, test_cfg):  # noqa: F811
    assert main(["build", "--config", "mini_lo_r8", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown config 'mini_lo_r8'") and "mini_low_r8" in err
    assert main(["build", "--config", "low_r8", "--out", str(tmp_path / "o")]) == 2
    assert "--images DIR" in capsys.readouterr().err  # Concept101 cannot be downloaded here
    assert main(["build", "--config", TEST_CONFIG, "--micro-datasets", "9", "--out", str(tmp_path / "o")]) == 2
    assert "between 1 and 4" in capsys.readouterr().err


def test_synthetic_source_serves_the_config(test_cfg):  # noqa: F811
    source = SyntheticSource(32)
    micros = source.micro_datasets(test_cfg)
    assert [m.name for m in micros] == ["concept-00", "concept-01", "concept-02", "concept-03"]
    assert micros[2].class_word == class_word(2) and len(micros[0].image_ids) == 1000
    # the objects of the low range are other classes than the classes of the medium range
    objects = SyntheticSource.named("synthetic-objects", 32)
    assert objects.kind == "object" and objects.class_word("concept-02") == class_word(512 + 2)
    assert np.array_equal(np.asarray(objects.load("concept-02/0005")), concept_image(514, 5, 32, "object"))
    with pytest.raises(MicroDatasetError, match="not a synthetic concept name"):
        objects.class_word("concept-100")
    with pytest.raises(MicroDatasetError, match="pre-training classes"):
        SyntheticSource(32, num_concepts=100, first_class=1000)
