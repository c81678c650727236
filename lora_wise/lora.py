"""LoRA weights as safetensors: read them in every common naming into one canonical form, and write them.

Whatever wrote a LoRA, :func:`read_lora` returns the same thing: an ordered
mapping from a canonical layer name (the diffusers module path, e.g.
``down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q``) to the layer's
factors ``A`` (r x k) and ``B`` (d x r) as float32, so that ``delta W = scale * B @ A``,
plus the ``alpha / r`` scale where the format carries one.

Namings understood:

* **PEFT** -- ``<path>.lora_A.weight`` / ``lora_B``, with or without an adapter name
  (``lora_A.default.weight``), with or without ``base_model.model.`` or ``unet.``
  prefixes; what ``pipeline.save_lora_weights`` and ``get_peft_model_state_dict`` write.
  Alpha comes from diffusers' ``lora_adapter_metadata`` or a sibling ``adapter_config.json``.
* **diffusers legacy** -- ``<path>.lora.down.weight`` / ``.lora.up.weight``,
  ``<attn>.processor.to_q_lora.down.weight`` and ``<path>.lora_layer.down.weight``.
* **kohya / sd-scripts** -- ``lora_unet_<path_with_underscores>.lora_down.weight``,
  ``.lora_up.weight`` and ``.alpha``.
* **rows of the published LoRA-WiSE** -- one nested-list column per tensor in the
  old diffusers naming, beside ``label`` and ``name``; and rows of this project's
  datasets, whose ``lora`` column holds safetensors bytes.

Written back (:func:`peft_safetensors`), a LoRA is a safetensors file in diffusers' PEFT naming
with the adapter metadata diffusers writes, so ``pipeline.load_lora_weights`` loads it;
:func:`canonical_safetensors` orders a file's header so that equal LoRAs are equal bytes.

Only safetensors is read.  Pickle-based files (``.bin``, ``.ckpt``, ``.pt``,
``.pth``) can execute code when loaded and are refused without being opened by
a pickle reader.  Every malformed input is a :class:`LoRAFormatError` naming the
tensor at fault and what to do.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Union

import numpy as np

from . import jsonio
from .errors import LoRAFormatError, NotFoundError, PickleRefusedError

PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl", ".pickle")
#: File names diffusers and PEFT give LoRA weights inside a folder.
WEIGHT_FILE_NAMES = ("pytorch_lora_weights.safetensors", "adapter_model.safetensors")

LoRASource = Union[str, os.PathLike, bytes, bytearray, memoryview, Mapping]


@dataclass
class LoRALayer:
    """One adapted layer: ``delta W = scale * B @ A`` with ``A`` r x k and ``B`` d x r."""

    name: str
    A: np.ndarray
    B: np.ndarray
    alpha: float | None = None

    @property
    def rank(self) -> int:
        return self.A.shape[0]

    @property
    def shape(self) -> tuple[int, int]:
        """Shape (d, k) of the weight the layer adapts."""
        return self.B.shape[0], self.A.shape[1]

    @property
    def scale(self) -> float | None:
        """``alpha / r`` where the format carries alpha, else None (read as 1)."""
        return None if self.alpha is None else self.alpha / self.rank


@dataclass
class LoRAWeights(Mapping):
    """An ordered mapping of canonical layer name -> :class:`LoRALayer`."""

    layers: dict[str, LoRALayer]
    naming: str
    metadata: dict[str, str] = field(default_factory=dict)

    def __getitem__(self, name: str) -> LoRALayer:
        return self.layers[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def rank(self) -> int:
        """The largest layer rank (features are zero-padded to it)."""
        return max(layer.rank for layer in self.layers.values())

    @property
    def ranks(self) -> set[int]:
        return {layer.rank for layer in self.layers.values()}


# --------------------------------------------------------------------------- entry point

def read_lora(source: LoRASource, *, name: str | None = None) -> LoRAWeights:
    """Read a LoRA from a file or folder path, safetensors bytes, or a state dict / dataset row.

    ``name`` labels the source in error messages (defaults to the path).
    """
    if isinstance(source, (str, os.PathLike)):
        return _read_path(Path(source))
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _read_bytes(bytes(source) if isinstance(source, memoryview) else source,
                           name or "<bytes>")
    if isinstance(source, Mapping):
        return _read_mapping(source, name or "<state dict>")
    raise TypeError(f"cannot read a LoRA from {type(source).__name__}: pass a .safetensors path, "
                    f"safetensors bytes, a state dict or a dataset row")


def _read_path(path: Path) -> LoRAWeights:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise PickleRefusedError(
            f"{path}: refusing to read a pickle-based checkpoint ({path.suffix}); unpickling can run "
            f"arbitrary code. Convert it to .safetensors in a trusted environment (for example "
            f"`safetensors.torch.save_file(torch.load(path, weights_only=True), 'lora.safetensors')`) "
            f"and pass that file.")
    if path.is_dir():
        found = [path / n for n in WEIGHT_FILE_NAMES if (path / n).is_file()]
        if not found:
            found = sorted(path.glob("*.safetensors"))
        if len(found) != 1:
            raise LoRAFormatError(
                f"{path}: expected one LoRA .safetensors file in this folder, found "
                f"{len(found)}{': ' + ', '.join(p.name for p in found) if found else ''}; pass the file itself.")
        path = found[0]
    if not path.is_file():
        raise NotFoundError(f"{path}: no such LoRA file")
    data = path.read_bytes()
    weights = _read_bytes(data, str(path))
    adapter_config = path.with_name("adapter_config.json")
    if adapter_config.is_file() and weights.naming == "peft":
        _apply_peft_config(weights, json.loads(adapter_config.read_text()))
    return weights


# --------------------------------------------------------------------------- safetensors

_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": "bf16"}


def _looks_like_safetensors(data: bytes) -> bool:
    """An 8-byte little-endian header length that fits the data, then a JSON object."""
    if len(data) < 9:
        return False
    (length,) = struct.unpack("<Q", data[:8])
    return 8 + length <= len(data) and data[8:9] == b"{"


def _looks_like_pickle(data: bytes) -> bool:
    # torch.save writes a zip archive; legacy torch and plain pickle start with PROTO n.
    return data[:4] == b"PK\x03\x04" or (len(data) > 2 and data[0] == 0x80 and 2 <= data[1] <= 5)


def _header(data: bytes) -> tuple[int, dict]:
    """The length and the parsed JSON of a safetensors file's header."""
    (length,) = struct.unpack("<Q", data[:8])
    return length, json.loads(data[8:8 + length])


def _safetensors_metadata(data: bytes) -> dict[str, str]:
    return dict(_header(data)[1].get("__metadata__") or {})


def _read_bytes(data: bytes | bytearray, name: str) -> LoRAWeights:
    import safetensors

    if not _looks_like_safetensors(data) and _looks_like_pickle(bytes(data[:8])):
        raise PickleRefusedError(
            f"{name}: this is a pickle-based (torch.save) checkpoint, not safetensors; it is refused "
            f"because unpickling can run arbitrary code. Convert it to .safetensors in a trusted environment.")
    if len(data) < 8:
        raise LoRAFormatError(f"{name}: {len(data)} bytes is too short for a safetensors file; "
                              f"the file is truncated or empty")
    try:
        entries = safetensors.deserialize(bytes(data) if isinstance(data, bytearray) else data)
        metadata = _safetensors_metadata(data)
    except Exception as exc:  # SafetensorError, bad JSON, struct errors
        raise LoRAFormatError(f"{name}: not a valid safetensors file ({exc}); it may be truncated or "
                              f"corrupt: download or export it again") from exc
    tensors = {}
    for key, info in entries:
        if not is_lora_key(key):
            continue
        dtype = _DTYPES.get(info["dtype"])
        if dtype is None:
            raise LoRAFormatError(f"{name}: tensor {key!r} has dtype {info['dtype']}; LoRA factors "
                                  f"must be floating point (F16, BF16, F32 or F64)")
        tensors[key] = _decode(info["data"], dtype, info["shape"])
    return _assemble(tensors, metadata, name)


def _decode(buffer: bytearray, dtype: Any, shape: list[int]) -> np.ndarray:
    if dtype == "bf16":  # bfloat16 is the top half of a float32
        raw = np.frombuffer(buffer, dtype="<u2").astype(np.uint32) << 16
        return raw.view(np.float32).reshape(shape)
    array = np.frombuffer(buffer, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape)
    return array if array.dtype == np.float32 else array.astype(np.float32)


# --------------------------------------------------------------------------- mappings

def _read_mapping(mapping: Mapping, name: str) -> LoRAWeights:
    if "lora" in mapping and isinstance(mapping["lora"], (bytes, bytearray, memoryview)):
        label = mapping.get("model_id", name)
        return read_lora(mapping["lora"], name=str(label))
    tensors = {}
    for key, value in mapping.items():
        if not isinstance(key, str) or not is_lora_key(key):
            continue
        tensors[key] = _to_array(value, key, name)
    metadata = {}
    return _assemble(tensors, metadata, name)


def _to_array(value: Any, key: str, name: str) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, without importing torch
        value = value.detach().to("cpu")
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        value = value.numpy()
    try:
        array = np.asarray(value, dtype=np.float32)
    except (ValueError, TypeError):
        try:  # nested object arrays, as pandas hands back list columns
            array = np.asarray(_nested_lists(value), dtype=np.float32)
        except (ValueError, TypeError) as exc:
            raise LoRAFormatError(f"{name}: tensor {key!r} is not a rectangular numeric array "
                                  f"({exc})") from exc
    return array


def _nested_lists(value: Any) -> Any:
    if isinstance(value, np.ndarray) and value.dtype == object:
        return [_nested_lists(v) for v in value]
    if isinstance(value, (list, tuple)):
        return [_nested_lists(v) for v in value]
    return value


# --------------------------------------------------------------------------- naming

# (pattern on the key, naming family); the pattern's groups: module path, role (A/B/alpha).
_KEY_PATTERNS: list[tuple[re.Pattern, str]] = [
    (re.compile(r"^(?P<path>.+)\.lora_(?P<role>A|B)(?:\.[^.]+)?\.weight$"), "peft"),
    (re.compile(r"^(?P<path>.+)\.processor\.(?P<proj>to_q|to_k|to_v|to_out|add_k_proj|add_v_proj)_lora"
                r"\.(?P<role>down|up)\.weight$"), "diffusers-legacy"),
    (re.compile(r"^(?P<path>.+)\.lora(?:_layer)?\.(?P<role>down|up)\.weight$"), "diffusers-legacy"),
    (re.compile(r"^(?P<path>lora_(?:unet|te\d?)_[^.]+)\.(?:lora_(?P<role>down|up)\.weight|(?P<alpha>alpha))$"),
     "kohya"),
]

_PREFIXES = ("base_model.model.", "unet.", "model.diffusion_model.")

# Multi-word module names, so that kohya's underscores map back to dotted paths.
_COMPOUNDS = {
    "down_blocks", "up_blocks", "mid_block", "transformer_blocks", "to_q", "to_k", "to_v", "to_out",
    "proj_in", "proj_out", "time_emb_proj", "conv_shortcut", "conv_in", "conv_out", "time_embedding",
    "linear_1", "linear_2", "add_k_proj", "add_v_proj", "add_q_proj", "to_add_out", "input_blocks",
    "output_blocks", "middle_block", "emb_layers", "in_layers", "out_layers", "skip_connection",
    "time_embed", "label_emb", "text_model", "self_attn", "q_proj", "k_proj", "v_proj", "out_proj",
    "final_layer_norm", "token_embedding", "position_embedding", "conv_norm_out", "add_embedding",
}
_MAX_COMPOUND = max(len(c.split("_")) for c in _COMPOUNDS)


def _kohya_path(stem: str) -> str:
    """``lora_unet_down_blocks_0_..._to_out_0`` -> ``down_blocks.0....to_out.0``."""
    component, _, rest = stem[len("lora_"):].partition("_")
    prefix = {"unet": "", "te": "text_encoder.", "te1": "text_encoder.", "te2": "text_encoder_2."}.get(
        component, component + ".")
    tokens = rest.split("_")
    parts, i = [], 0
    while i < len(tokens):
        for width in range(min(_MAX_COMPOUND, len(tokens) - i), 0, -1):
            candidate = "_".join(tokens[i:i + width])
            if width == 1 or candidate in _COMPOUNDS:
                parts.append(candidate)
                i += width
                break
    return prefix + ".".join(parts)


def _canonical_path(path: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if path.startswith(prefix):
                path, changed = path[len(prefix):], True
    return path


def is_lora_key(key: str) -> bool:
    """Whether a tensor name is a LoRA factor or alpha in one of the namings read here."""
    return any(pattern.match(key) for pattern, _ in _KEY_PATTERNS)


def _parse_key(key: str) -> tuple[str, str, str] | None:
    """Map a tensor key to (canonical layer name, role in {'A','B','alpha'}, naming)."""
    for pattern, naming in _KEY_PATTERNS:
        match = pattern.match(key)
        if not match:
            continue
        groups = match.groupdict()
        if naming == "kohya":
            role = "alpha" if groups.get("alpha") else {"down": "A", "up": "B"}[groups["role"]]
            return _kohya_path(groups["path"]), role, naming
        role = {"A": "A", "B": "B", "down": "A", "up": "B"}[groups["role"]]
        path = groups["path"]
        if groups.get("proj"):
            path = f"{path}.{groups['proj']}" + (".0" if groups["proj"] == "to_out" else "")
        return _canonical_path(path), role, naming
    return None


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _assemble(tensors: dict[str, np.ndarray], metadata: dict[str, str], name: str) -> LoRAWeights:
    factors: dict[str, dict[str, tuple[str, np.ndarray]]] = {}
    namings = set()
    for key, array in tensors.items():
        parsed = _parse_key(key)
        if parsed is None:
            continue
        layer, role, naming = parsed
        namings.add(naming)
        slot = factors.setdefault(layer, {})
        if role in slot:
            raise LoRAFormatError(f"{name}: layer {layer!r} has two {role} tensors ({slot[role][0]!r} and "
                                  f"{key!r}); the file mixes adapters or namings: keep one adapter per file")
        slot[role] = (key, array)
    if not factors:
        seen = ", ".join(sorted(tensors)[:5]) or "none"
        raise LoRAFormatError(
            f"{name}: no LoRA tensors found (keys seen: {seen}). Expected PEFT (`.lora_A.weight`), "
            f"diffusers (`.lora.down.weight`) or kohya (`.lora_down.weight`) naming.")
    if len(namings) > 1:
        raise LoRAFormatError(f"{name}: the tensors mix namings ({', '.join(sorted(namings))}); "
                              f"a LoRA file uses one naming")
    naming = namings.pop()
    peft_config = _peft_metadata(metadata)
    layers = {}
    for layer in sorted(factors, key=_natural_key):
        slot = factors[layer]
        for role, other in (("A", "B"), ("B", "A")):
            if role not in slot:
                present = slot.get(other, slot.get("alpha", ("?",)))[0]
                raise LoRAFormatError(f"{name}: layer {layer!r} has {present!r} but no {role} factor "
                                      f"(half a pair); the file is incomplete")
        (a_key, a), (b_key, b) = slot["A"], slot["B"]
        a, b = _to_2d(a, a_key, name, "A"), _to_2d(b, b_key, name, "B")
        if a.shape[0] != b.shape[1]:
            raise LoRAFormatError(f"{name}: layer {layer!r}: ranks disagree: {a_key!r} has rank "
                                  f"{a.shape[0]} (shape {a.shape}) but {b_key!r} has rank {b.shape[1]} "
                                  f"(shape {b.shape})")
        for key, array in ((a_key, a), (b_key, b)):
            if not np.isfinite(array).all():
                bad = int(np.size(array) - np.isfinite(array).sum())
                raise LoRAFormatError(f"{name}: tensor {key!r} holds {bad} non-finite values (NaN or inf); "
                                      f"the LoRA diverged or was corrupted and cannot be analysed")
        alpha = None
        if "alpha" in slot:
            alpha_key, alpha_value = slot["alpha"]
            alpha = float(np.asarray(alpha_value, dtype=np.float64).reshape(-1)[0])
            if not np.isfinite(alpha):
                raise LoRAFormatError(f"{name}: tensor {alpha_key!r} is not finite")
        elif peft_config is not None:
            alpha = _peft_alpha(peft_config, layer)
        layers[layer] = LoRALayer(layer, np.ascontiguousarray(a), np.ascontiguousarray(b), alpha)
    return LoRAWeights(layers=layers, naming=naming, metadata=metadata)


def _to_2d(array: np.ndarray, key: str, name: str, role: str) -> np.ndarray:
    if array.ndim == 2:
        return array
    if array.ndim == 4:  # conv LoRA: A (r, in, kh, kw) -> (r, in*kh*kw); B (out, r, 1, 1) -> (out, r)
        if role == "B" and array.shape[2:] != (1, 1):
            raise LoRAFormatError(f"{name}: conv LoRA tensor {key!r} has shape {array.shape}; "
                                  f"the up factor of a conv LoRA must be 1x1")
        return array.reshape(array.shape[0], -1)
    raise LoRAFormatError(f"{name}: tensor {key!r} has shape {tuple(array.shape)}; LoRA factors are "
                          f"2-D (linear) or 4-D (conv)")


# --------------------------------------------------------------------------- PEFT alpha

def _peft_metadata(metadata: dict[str, str]) -> dict | None:
    raw = metadata.get("lora_adapter_metadata")
    if not raw:
        return None
    try:
        packed = json.loads(raw)
    except json.JSONDecodeError:
        return None
    # diffusers prefixes each LoraConfig field with the component ("unet.lora_alpha").
    config: dict[str, Any] = {}
    for key, value in packed.items():
        component, _, field_name = key.rpartition(".")
        if component in ("", "unet", "transformer"):
            config[field_name] = value
    return config or None


def _apply_peft_config(weights: LoRAWeights, config: dict) -> None:
    for layer in weights.layers.values():
        if layer.alpha is None:
            layer.alpha = _peft_alpha(config, layer.name)


def _peft_alpha(config: dict, layer: str) -> float | None:
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if re.search(rf"(^|\.){re.escape(pattern)}$", layer) or re.fullmatch(pattern, layer):
            return float(value)
    alpha = config.get("lora_alpha")
    return None if alpha is None else float(alpha)


# --------------------------------------------------------------------------- writing

def peft_safetensors(weights: LoRAWeights, alpha: float | None = None) -> bytes:
    """A LoRA as a safetensors file in diffusers' PEFT naming (``unet.<layer>.lora_A.weight``).

    The ``lora_adapter_metadata`` that diffusers' ``save_lora_weights`` writes carries
    rank and alpha, so ``pipeline.load_lora_weights`` and :func:`read_lora` get the
    scale back.  ``alpha`` overrides every layer's; otherwise a layer keeps its own,
    or its rank (scale 1) where it has none.
    """
    from safetensors.numpy import save

    tensors, ranks, alphas = {}, {}, {}
    for name, layer in weights.items():
        tensors[f"unet.{name}.lora_A.weight"] = np.ascontiguousarray(layer.A, dtype=np.float32)
        tensors[f"unet.{name}.lora_B.weight"] = np.ascontiguousarray(layer.B, dtype=np.float32)
        ranks[name] = layer.rank
        value = alpha if alpha is not None else layer.alpha if layer.alpha is not None else layer.rank
        alphas[name] = int(value) if float(value).is_integer() else float(value)
    r = Counter(ranks.values()).most_common(1)[0][0]
    lora_alpha = Counter(alphas.values()).most_common(1)[0][0]
    config = {"r": r, "lora_alpha": lora_alpha, "target_modules": sorted(ranks),
              "rank_pattern": {n: v for n, v in ranks.items() if v != r},
              "alpha_pattern": {n: v for n, v in alphas.items() if v != lora_alpha}}
    packed = {f"unet.{key}": value for key, value in config.items()}
    return save(tensors, metadata={"format": "pt",
                                   "lora_adapter_metadata": jsonio.dumps(packed, indent=2, sort_keys=True)})


def canonical_safetensors(data: bytes) -> bytes:
    """The same safetensors file with its JSON header in a fixed order (metadata keys sorted).

    safetensors serialises the ``__metadata__`` map in hash order, which changes from
    call to call; tensors and metadata are untouched, only their listing is ordered,
    so equal LoRAs give equal bytes.
    """
    length, header = _header(data)
    ordered = {}
    if "__metadata__" in header:
        ordered["__metadata__"] = dict(sorted(header.pop("__metadata__").items()))
    ordered.update(sorted(header.items(), key=lambda item: (item[1]["data_offsets"][0], item[0])))
    text = jsonio.dumps(ordered, compact=True).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data[8 + length:]
