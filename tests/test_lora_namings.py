"""read_lora on real files of every naming family, checked against PEFT's own delta weights.

One LoRA lives in the miniature SD-architecture pipeline (``lora_wise.builder.backbones``;
random init is enough for naming).  It is written out by PEFT
(``get_peft_model_state_dict``, raw ``state_dict`` with adapter names and
prefixes, ``save_pretrained``), by diffusers' own ``save_lora_weights``, and
converted by hand into diffusers' legacy and kohya namings.  Every file must
read back to the same canonical layers and bit-identical factors, and
``scale * B @ A`` must equal ``get_delta_weight`` computed by PEFT itself.
"""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("peft")

from safetensors.numpy import save as save_numpy  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from lora_wise.lora import peft_safetensors  # noqa: E402
from lora_wise.lora import LoRAFormatError, PickleRefusedError, read_header, read_lora  # noqa: E402

RANK, ALPHA = 4, 8  # scale alpha / r = 2, so a lost alpha cannot go unnoticed
TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def _tokenizer_files(folder):
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for word in ("a", "photo", "of", "sks", "dog"):
        vocab[word + "</w>"] = len(vocab)
    for letter in "abcdefghijklmnopqrstuvwxyz":
        vocab.setdefault(letter, len(vocab))
        vocab.setdefault(letter + "</w>", len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return folder / "vocab.json", folder / "merges.txt", len(vocab)


def mini_pipeline(folder):
    """The project's miniature SD pipeline (random init), or a local one where the builder is absent."""
    try:
        from lora_wise.builder.backbones import create_miniature_pipeline
    except ImportError:  # the builder stage is optional; the naming checks do not depend on it
        return _local_mini_pipeline(folder)
    return create_miniature_pipeline()


def _local_mini_pipeline(folder):
    """A miniature StableDiffusionPipeline (seeded: two calls give the same base weights)."""
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab, merges, size = _tokenizer_files(folder)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=24, attention_head_dim=4, norm_num_groups=8)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
                        up_block_types=("UpDecoderBlock2D",), block_out_channels=(8,), latent_channels=4,
                        norm_num_groups=8, sample_size=16)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=size, hidden_size=24, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1))
    tokenizer = CLIPTokenizer(str(vocab), str(merges), model_max_length=16)
    return StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                   scheduler=DDPMScheduler(steps_offset=1, clip_sample=False),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def lora_modules(unet) -> dict:
    from peft.tuners.lora import LoraLayer

    return {name: module for name, module in unet.named_modules() if isinstance(module, LoraLayer)}


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    """The pipeline with a PEFT LoRA (random non-zero B), its factors and PEFT's delta weights."""
    from peft import LoraConfig, get_peft_model

    folder = tmp_path_factory.mktemp("mini")
    pipe = mini_pipeline(folder)
    config = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS, init_lora_weights=False)
    peft_model = get_peft_model(pipe.unet, config)  # injects the LoRA into pipe.unet in place
    modules = lora_modules(pipe.unet)
    with torch.no_grad():
        factors = {name: (m.lora_A["default"].weight.numpy().copy(), m.lora_B["default"].weight.numpy().copy())
                   for name, m in modules.items()}
        deltas = {name: m.get_delta_weight("default").double().numpy() for name, m in modules.items()}
    return {"folder": folder, "pipe": pipe, "peft_model": peft_model, "config": config,
            "factors": factors, "deltas": deltas}


def _attention_and_projection(path: str) -> tuple[str, str]:
    attention, _, projection = path.rpartition(".attn")
    number, _, projection = projection.partition(".")
    return f"{attention}.attn{number}", projection


def write_family(family: str, mini, folder):
    """Write the LoRA in one naming family; return (path, naming, carries_alpha)."""
    from diffusers import StableDiffusionPipeline
    from peft.utils import get_peft_model_state_dict

    unet, factors = mini["pipe"].unet, mini["factors"]
    path = folder / f"{family}.safetensors"
    if family == "peft-state-dict":
        save_file(get_peft_model_state_dict(unet), path)
        return path, "peft", False
    if family == "peft-prefixed":  # base_model.model. prefix, as a PeftModel's state dict has
        save_file(get_peft_model_state_dict(mini["peft_model"]), path)
        return path, "peft", False
    if family == "peft-raw-with-adapter-names":  # lora_A.default.weight + every base weight
        state = {k: v.contiguous() for k, v in mini["peft_model"].state_dict().items()}
        save_file(state, path)
        return path, "peft", False
    if family == "peft-save-pretrained":  # adapter_model.safetensors + adapter_config.json (alpha)
        mini["peft_model"].save_pretrained(folder / family)
        return folder / family, "peft", True
    if family == "diffusers-save-lora-weights":
        StableDiffusionPipeline.save_lora_weights(
            folder / family, unet_lora_layers=get_peft_model_state_dict(unet),
            unet_lora_adapter_metadata=mini["config"].to_dict())
        return folder / family, "peft", True
    tensors = {}
    for name, (a, b) in factors.items():
        attention, projection = _attention_and_projection(name)
        if family == "diffusers-legacy":
            stems = (f"unet.{name}.lora.down.weight", f"unet.{name}.lora.up.weight")
        elif family == "diffusers-lora-layer":
            stems = (f"{name}.lora_layer.down.weight", f"{name}.lora_layer.up.weight")
        elif family == "diffusers-attn-processor":
            short = projection.split(".")[0]  # to_out.0 -> to_out
            stems = (f"{attention}.processor.{short}_lora.down.weight", f"{attention}.processor.{short}_lora.up.weight")
        elif family == "kohya":
            stem = "lora_unet_" + name.replace(".", "_")
            stems = (f"{stem}.lora_down.weight", f"{stem}.lora_up.weight")
            tensors[f"{stem}.alpha"] = np.array(ALPHA, dtype=np.float32)
        else:
            raise AssertionError(family)
        tensors[stems[0]], tensors[stems[1]] = a, b
    path.write_bytes(save_numpy(tensors))
    naming = "kohya" if family == "kohya" else "diffusers-legacy"
    return path, naming, family == "kohya"


FAMILIES = ["peft-state-dict", "peft-prefixed", "peft-raw-with-adapter-names", "peft-save-pretrained",
            "diffusers-save-lora-weights", "diffusers-legacy", "diffusers-lora-layer",
            "diffusers-attn-processor", "kohya"]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_reads_to_the_same_layers_and_peft_delta(family, mini, tmp_path):
    path, naming, carries_alpha = write_family(family, mini, tmp_path)
    weights = read_lora(path)
    assert weights.naming == naming
    # canonical names are the UNet's own module paths, in natural order
    # 4 transformer blocks (down, mid, 2 up) x attn1/attn2 x 4 projections
    assert set(weights) == set(mini["factors"]) and len(weights) == 32
    for name, (a, b) in mini["factors"].items():
        layer = weights[name]
        np.testing.assert_array_equal(layer.A, a)
        np.testing.assert_array_equal(layer.B, b)
        assert layer.scale == (ALPHA / RANK if carries_alpha else None)
        scale = layer.scale if carries_alpha else ALPHA / RANK  # known from the config where the file lacks it
        dense = scale * layer.B.astype(np.float64) @ layer.A.astype(np.float64)
        np.testing.assert_allclose(dense, mini["deltas"][name], rtol=1e-5, atol=1e-7)


def test_families_agree_on_layer_order(mini, tmp_path):
    orders = set()
    for family in FAMILIES:
        (tmp_path / family).mkdir()
        orders.add(tuple(read_lora(write_family(family, mini, tmp_path / family)[0])))
    assert len(orders) == 1
    [order] = orders
    assert order[0] == "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k"
    assert order.index("up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_v") > order.index(
        "mid_block.attentions.0.transformer_blocks.0.attn2.to_v")


def test_our_peft_writer_loads_into_diffusers_with_its_scale(mini, tmp_path):
    """peft_safetensors (what import-official stores) loads with diffusers' load_lora_weights."""
    kohya, _, _ = write_family("kohya", mini, tmp_path)
    folder = tmp_path / "ours"
    folder.mkdir()
    (folder / "pytorch_lora_weights.safetensors").write_bytes(peft_safetensors(read_lora(kohya)))
    fresh = mini_pipeline(tmp_path)
    fresh.load_lora_weights(str(folder))
    loaded = lora_modules(fresh.unet)
    assert set(loaded) == set(mini["deltas"])
    with torch.no_grad():
        for name, module in loaded.items():
            [adapter] = module.active_adapters
            delta = module.get_delta_weight(adapter).double().numpy()
            np.testing.assert_allclose(delta, mini["deltas"][name], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_files_decode_exactly(dtype, mini, tmp_path):
    from peft.utils import get_peft_model_state_dict

    state = {k: v.to(getattr(torch, dtype)) for k, v in get_peft_model_state_dict(mini["pipe"].unet).items()}
    save_file(state, tmp_path / "half.safetensors")
    weights = read_lora(tmp_path / "half.safetensors")
    for key, tensor in state.items():
        if ".lora_A." in key:
            name = key.split(".lora_A.")[0]
            np.testing.assert_array_equal(weights[name].A, tensor.float().numpy())


# --------------------------------------------------------------------------- error paths


class _SideEffect:
    """Unpickling this creates a file: proof that a reader ran pickle."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_pickle_files_are_refused_without_being_unpickled(tmp_path):
    marker = tmp_path / "unpickled"
    payload = pickle.dumps({"x.lora_A.weight": _SideEffect(marker)})
    for suffix in (".bin", ".ckpt", ".pt", ".pth"):
        path = tmp_path / f"lora{suffix}"
        path.write_bytes(payload)
        with pytest.raises(PickleRefusedError, match="refusing to read a pickle-based checkpoint"):
            read_lora(path)
    torch.save({"x.lora_A.weight": _SideEffect(marker)}, tmp_path / "zip.pt")
    disguised = tmp_path / "disguised.safetensors"  # a torch.save zip under a safetensors name
    disguised.write_bytes((tmp_path / "zip.pt").read_bytes())
    for source in (disguised, payload, (tmp_path / "zip.pt").read_bytes()):
        with pytest.raises(PickleRefusedError, match="unpickling can run arbitrary code"):
            read_lora(source)
    assert not marker.exists()
    pickle.loads(payload)  # the payload is live: unpickling it does leave the mark
    assert marker.exists()


def _file(tmp_path, tensors, name="bad.safetensors"):
    path = tmp_path / name
    path.write_bytes(save_numpy(tensors))
    return path


def test_malformed_files_get_errors_naming_the_tensor(tmp_path):
    layer = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    a, b = np.ones((4, 16), np.float32), np.ones((16, 4), np.float32)
    with pytest.raises(LoRAFormatError, match=rf"{layer}.*half a pair"):
        read_lora(_file(tmp_path, {f"unet.{layer}.lora_A.weight": a}))
    with pytest.raises(LoRAFormatError, match=r"ranks disagree.*rank 4.*rank 3"):
        read_lora(_file(tmp_path, {f"unet.{layer}.lora_A.weight": a,
                                   f"unet.{layer}.lora_B.weight": b[:, :3].copy()}))
    nan = b.copy()
    nan[2, 1] = np.nan
    with pytest.raises(LoRAFormatError, match=r"lora_B.weight.*1 non-finite"):
        read_lora(_file(tmp_path, {f"unet.{layer}.lora_A.weight": a, f"unet.{layer}.lora_B.weight": nan}))
    good = _file(tmp_path, {f"unet.{layer}.lora_A.weight": a, f"unet.{layer}.lora_B.weight": b}, "good.safetensors")
    assert read_lora(good)[layer].rank == 4
    data = good.read_bytes()
    for cut in (len(data) - 10, 40, 5):
        (tmp_path / "cut.safetensors").write_bytes(data[:cut])
        with pytest.raises(LoRAFormatError, match="truncated"):
            read_lora(tmp_path / "cut.safetensors")
    with pytest.raises(LoRAFormatError, match="no LoRA tensors found"):
        read_lora(_file(tmp_path, {f"{layer}.weight": np.ones((16, 16), np.float32)}))
    with pytest.raises(FileNotFoundError):
        read_lora(tmp_path / "absent.safetensors")


# --------------------------------------------------------------------------- files other tools write


def _loaded_deltas(pipe) -> dict:
    """PEFT's delta weights of every LoRA module diffusers loaded into ``pipe``'s UNet."""
    with torch.no_grad():
        return {name: module.get_delta_weight(module.active_adapters[0]).double().numpy()
                for name, module in lora_modules(pipe.unet).items()}


def test_kohya_file_written_by_diffusers_converter(mini, tmp_path):
    """diffusers' convert_state_dict_to_kohya writes alpha as an int64 tensor (the rank); the file reads,
    and scale * B @ A equals the delta weight diffusers itself loads from it."""
    from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya
    from peft.utils import get_peft_model_state_dict

    peft_state = {f"unet.{k}": v for k, v in get_peft_model_state_dict(mini["pipe"].unet).items()}
    kohya = convert_state_dict_to_kohya(peft_state)
    save_file({k: v.contiguous() for k, v in kohya.items()}, tmp_path / "kohya.safetensors")
    alphas = {k: v for k, v in kohya.items() if k.endswith(".alpha")}
    assert alphas and all(v.dtype == torch.int64 for v in alphas.values())  # what makes this case
    assert {info.dtype for key, info in read_header(tmp_path / "kohya.safetensors").tensors.items()
            if key.endswith(".alpha")} == {"I64"}

    weights = read_lora(tmp_path / "kohya.safetensors")
    assert weights.naming == "kohya" and set(weights) == set(mini["factors"])
    assert all(layer.alpha == RANK and layer.scale == 1.0 for layer in weights.values())

    fresh = mini_pipeline(tmp_path)
    fresh.load_lora_weights(str(tmp_path / "kohya.safetensors"))
    loaded = _loaded_deltas(fresh)
    assert set(loaded) == set(weights)
    for name, delta in loaded.items():
        layer = weights[name]
        ours = layer.scale * layer.B.astype(np.float64) @ layer.A.astype(np.float64)
        np.testing.assert_allclose(ours, delta, rtol=1e-5, atol=1e-7)


def test_attention_processor_naming_reads_as_diffusers_converts_it(mini, tmp_path):
    """The old ``<attn>.processor.to_q_lora.down.weight`` naming: diffusers' own converter to PEFT names and
    ours agree on every layer and factor."""
    from diffusers.utils.state_dict_utils import convert_unet_state_dict_to_peft
    from safetensors.numpy import load_file

    path, naming, _ = write_family("diffusers-attn-processor", mini, tmp_path)
    assert naming == "diffusers-legacy" and any(".processor.to_out_lora.down." in k for k in load_file(path))
    converted = convert_unet_state_dict_to_peft(load_file(path))
    assert all(".lora_A." in k or ".lora_B." in k for k in converted)
    theirs = read_lora({k: np.asarray(v) for k, v in converted.items()})
    ours = read_lora(path)
    assert list(ours) == list(theirs) and set(ours) == set(mini["factors"])
    for name in ours:
        np.testing.assert_array_equal(ours[name].A, theirs[name].A)
        np.testing.assert_array_equal(ours[name].B, theirs[name].B)


@pytest.mark.parametrize("rslora", [False, True])
def test_peft_folder_reads_r_and_alpha_from_adapter_config(rslora, tmp_path):
    """PEFT's save_pretrained folder: adapter_model.safetensors without alpha, adapter_config.json beside it
    (r, lora_alpha, alpha_pattern, use_rslora); scale * B @ A equals PEFT's own delta weight."""
    from peft import LoraConfig, get_peft_model

    pipe = mini_pipeline(tmp_path)
    special = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_v"
    config = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS, init_lora_weights=False,
                        use_rslora=rslora, alpha_pattern={special: 3})
    model = get_peft_model(pipe.unet, config)
    model.save_pretrained(tmp_path / "adapter")
    assert {p.name for p in (tmp_path / "adapter").iterdir()} >= {"adapter_model.safetensors", "adapter_config.json"}
    weights = read_lora(tmp_path / "adapter")
    deltas = {name: m.get_delta_weight("default").detach().double().numpy() for name, m in lora_modules(pipe.unet).items()}
    assert set(weights) == set(deltas)
    for name, delta in deltas.items():
        layer = weights[name]
        np.testing.assert_allclose(layer.scale * layer.B.astype(np.float64) @ layer.A.astype(np.float64), delta,
                                   rtol=1e-5, atol=1e-7)
    assert weights[special].scale == pytest.approx(3 / (RANK ** 0.5 if rslora else RANK))

    config_path = tmp_path / "adapter" / "adapter_config.json"
    saved = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**saved, "r": RANK * 2}))
    with pytest.raises(LoRAFormatError, match=rf"r is {RANK * 2} for layer .* but its tensors have rank {RANK}"):
        read_lora(tmp_path / "adapter")
    config_path.write_text("{not json")
    with pytest.raises(LoRAFormatError, match="adapter_config.json: not valid JSON"):
        read_lora(tmp_path / "adapter")
    config_path.write_text(json.dumps({**saved, "lora_alpha": "eight"}))
    with pytest.raises(LoRAFormatError, match="lora_alpha is 'eight'; it must be a positive number"):
        read_lora(tmp_path / "adapter")
