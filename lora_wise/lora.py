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
  Rank and alpha come from diffusers' ``lora_adapter_metadata`` or, for PEFT's
  ``adapter_model.safetensors``, the ``adapter_config.json`` beside it (``r``, ``lora_alpha``,
  their per-module patterns, ``use_rslora``); a rank the tensors contradict is an error.
* **diffusers legacy** -- ``<path>.lora.down.weight`` / ``.lora.up.weight``,
  ``<attn>.processor.to_q_lora.down.weight`` and ``<path>.lora_layer.down.weight``.
* **kohya / sd-scripts** -- ``lora_unet_<path_with_underscores>.lora_down.weight``,
  ``.lora_up.weight`` and ``.alpha`` (a float, or an int64 as diffusers' ``convert_state_dict_to_kohya``
  writes it).
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

**Header first.**  A file's header is read and checked before any tensor: its length
(``MAX_HEADER_BYTES``), the number of tensors (``MAX_TENSORS``), every dtype (safetensors' own),
every tensor's size against its shape, offsets in order without overlap or hole and inside the
file, the LoRA tensors' dtypes and total size (``MAX_LORA_BYTES``).  A header that claims more
than the file holds is refused having read nothing else.  Then only the LoRA tensors are read,
from a memory map of the file, so peak memory follows the LoRA's own size, not the file's (a
checkpoint with a LoRA inside costs the LoRA).  Values that would overflow float32 once scaled
(``|alpha/r| * ||B|| * ||A||``) are refused like NaN.
"""

from __future__ import annotations

import json
import math
import mmap
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
        return _read_bytes(source, name or "<bytes>")
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
    name = str(path)
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        header = _read_header(file.read(9), size, file.read, name)
        entries = _lora_entries(header, name)
        if entries and header.data_bytes:
            with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                tensors = {key: _decode(mapped, header.data_start, info) for key, info in entries.items()}
        else:
            tensors = {key: _decode(b"", 0, info) for key, info in entries.items()}
    weights = _assemble(tensors, header.metadata, name, keys=header.tensors)
    adapter_config = path.with_name("adapter_config.json")
    if adapter_config.is_file() and weights.naming == "peft":
        _apply_peft_config(weights, _read_adapter_config(adapter_config), str(adapter_config))
    _check_magnitudes(weights, name)
    return weights


# --------------------------------------------------------------------------- safetensors, header first

#: The limits of what a safetensors header may declare.  A file beyond them, or whose header
#: declares bytes the file does not hold, is refused after reading its header and before reading
#: any tensor.  The JSON header: safetensors' own limit.
MAX_HEADER_BYTES = 100_000_000
#: Tensors listed in one file (an SDXL LoRA with both text encoders lists about 2,200).
MAX_TENSORS = 100_000
#: Bytes of the LoRA tensors (factors and alphas) read from one file; other tensors are never read.
MAX_LORA_BYTES = 8 * 1024 ** 3
#: Dimensions of one tensor.
MAX_DIMENSIONS = 8

#: Every dtype of the safetensors format, with its size in bits.
SAFETENSORS_DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "I16": 16, "U16": 16,
    "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "I64": 64, "U64": 64, "F64": 64,
    "C64": 64, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}
#: dtypes a LoRA factor may have (decoded to float32).
FACTOR_DTYPES = ("F16", "BF16", "F32", "F64")
#: dtypes an alpha may have: kohya files carry it as a float or, as diffusers'
#: ``convert_state_dict_to_kohya`` writes it, an int64.
ALPHA_DTYPES = FACTOR_DTYPES + ("I8", "I16", "I32", "I64", "U8", "U16", "U32", "U64")
_NUMPY = {"F16": "<f2", "F32": "<f4", "F64": "<f8", "I8": "i1", "I16": "<i2", "I32": "<i4", "I64": "<i8",
          "U8": "u1", "U16": "<u2", "U32": "<u4", "U64": "<u8"}


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as the header declares it: ``start`` and ``end`` are offsets into the data section."""

    key: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


@dataclass
class SafetensorsHeader:
    """A checked safetensors header: every tensor lies inside the file, in order, without overlap."""

    length: int  # bytes of JSON after the 8-byte length
    metadata: dict[str, str]
    tensors: dict[str, TensorInfo]
    data_bytes: int

    @property
    def data_start(self) -> int:
        return 8 + self.length


def _looks_like_safetensors(first: bytes, size: int) -> bool:
    """An 8-byte little-endian header length that fits the file, then a JSON object."""
    if len(first) < 9:
        return False
    (length,) = struct.unpack("<Q", first[:8])
    return 8 + length <= size and first[8:9] == b"{"


def _looks_like_pickle(data: bytes) -> bool:
    # torch.save writes a zip archive; legacy torch and plain pickle start with PROTO n.
    return data[:4] == b"PK\x03\x04" or (len(data) > 2 and data[0] == 0x80 and 2 <= data[1] <= 5)


def _corrupt(name: str, what: str) -> LoRAFormatError:
    return LoRAFormatError(f"{name}: not a valid safetensors file: {what}; the file is truncated, corrupt or "
                           f"not safetensors: download or export it again")


def _read_header(first: bytes, size: int, read, name: str) -> SafetensorsHeader:
    """Parse and check a safetensors header from the file's first 9 bytes, its size and ``read(n)``
    (the bytes after the first 9); nothing past the header is read."""
    if not _looks_like_safetensors(first, size) and _looks_like_pickle(first[:8]):
        raise PickleRefusedError(
            f"{name}: this is a pickle-based (torch.save) checkpoint, not safetensors; it is refused "
            f"because unpickling can run arbitrary code. Convert it to .safetensors in a trusted environment.")
    if size < 8:
        raise LoRAFormatError(f"{name}: {size} bytes is too short for a safetensors file; "
                              f"the file is truncated or empty")
    (length,) = struct.unpack("<Q", first[:8])
    if length > MAX_HEADER_BYTES:
        raise _corrupt(name, f"its header declares {length:,} bytes of JSON, more than the {MAX_HEADER_BYTES:,} "
                             f"bytes safetensors allows")
    if 8 + length > size:
        raise _corrupt(name, f"its header declares {length:,} bytes of JSON but the file holds "
                             f"{size - 8:,} bytes after the length")
    raw = first[8:] + read(max(0, length - len(first[8:])))
    try:
        parsed = json.loads(bytes(raw[:length]))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _corrupt(name, f"its header is not JSON ({exc})") from None
    if not isinstance(parsed, dict):
        raise _corrupt(name, "its header is not a JSON object")
    metadata = parsed.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _corrupt(name, "its __metadata__ is not a map of strings")
    if len(parsed) > MAX_TENSORS:
        raise LoRAFormatError(f"{name}: its header lists {len(parsed):,} tensors, more than the {MAX_TENSORS:,} "
                              f"a LoRA file may hold (lora_wise.lora.MAX_TENSORS); this is not a LoRA")
    data_bytes = size - 8 - length
    tensors = {key: _tensor_info(key, value, name) for key, value in parsed.items()}
    position, previous = 0, None
    for info in sorted(tensors.values(), key=lambda i: (i.start, i.end)):
        if info.end > data_bytes:
            raise LoRAFormatError(
                f"{name}: tensor {info.key!r} declares bytes {info.start:,} to {info.end:,} of the data but the "
                f"file holds only {data_bytes:,}: its header lies or the file is truncated; it was refused "
                f"before any tensor was read: download or export it again")
        if info.start < position:
            raise _corrupt(name, f"tensors {previous!r} and {info.key!r} overlap (bytes {info.start:,} to "
                                 f"{position:,})")
        if info.start > position:
            raise _corrupt(name, f"{info.start - position:,} bytes before tensor {info.key!r} belong to no tensor")
        position, previous = info.end, info.key
    if position != data_bytes:
        raise _corrupt(name, f"its tensors end at byte {position:,} of the data but the file holds {data_bytes:,}")
    return SafetensorsHeader(length=length, metadata=dict(metadata), tensors=tensors, data_bytes=data_bytes)


def _tensor_info(key: str, value: Any, name: str) -> TensorInfo:
    if not isinstance(value, dict):
        raise _corrupt(name, f"the header entry of {key!r} is not an object")
    dtype, shape, offsets = value.get("dtype"), value.get("shape"), value.get("data_offsets")
    if dtype not in SAFETENSORS_DTYPE_BITS:
        raise LoRAFormatError(f"{name}: tensor {key!r} has dtype {dtype!r}, which safetensors does not define "
                              f"({', '.join(SAFETENSORS_DTYPE_BITS)}); the file is corrupt")
    if (not isinstance(shape, list) or len(shape) > MAX_DIMENSIONS
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise _corrupt(name, f"tensor {key!r} has shape {shape!r} (at most {MAX_DIMENSIONS} sizes of 0 or more)")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]):
        raise _corrupt(name, f"tensor {key!r} has data offsets {offsets!r} (two byte positions, start <= end)")
    elements = 1
    for d in shape:
        elements *= d
    bits = elements * SAFETENSORS_DTYPE_BITS[dtype]
    if bits % 8 or bits // 8 != offsets[1] - offsets[0]:
        raise _corrupt(name, f"tensor {key!r} ({dtype}, shape {tuple(shape)}) needs {bits / 8:,.0f} bytes but its "
                             f"offsets span {offsets[1] - offsets[0]:,}")
    return TensorInfo(key, dtype, tuple(shape), offsets[0], offsets[1])


def _lora_entries(header: SafetensorsHeader, name: str) -> dict[str, TensorInfo]:
    """The LoRA tensors of a checked header, with their dtypes and total size checked."""
    entries = {}
    for key, info in header.tensors.items():
        parsed = _parse_key(key)
        if parsed is None:
            continue
        role = parsed[1]
        if role == "alpha" and info.dtype not in ALPHA_DTYPES:
            raise LoRAFormatError(f"{name}: tensor {key!r} has dtype {info.dtype}; a LoRA alpha is a number "
                                  f"(an integer or floating-point scalar)")
        if role != "alpha" and info.dtype not in FACTOR_DTYPES:
            raise LoRAFormatError(f"{name}: tensor {key!r} has dtype {info.dtype}; the LoRA's down and up "
                                  f"(A and B) matrices must be floating point ({', '.join(FACTOR_DTYPES)})")
        entries[key] = info
    total = sum(info.end - info.start for info in entries.values())
    if total > MAX_LORA_BYTES:
        raise LoRAFormatError(f"{name}: its LoRA tensors declare {total:,} bytes, more than the {MAX_LORA_BYTES:,} "
                              f"read from one file (lora_wise.lora.MAX_LORA_BYTES)")
    return entries


def _decode(buffer, data_start: int, info: TensorInfo) -> np.ndarray:
    """One tensor as a fresh array (float32, or float64 for an integer alpha), from the bytes it declares."""
    count = (info.end - info.start) // max(1, SAFETENSORS_DTYPE_BITS[info.dtype] // 8)
    wanted = np.float64 if info.dtype[0] in "IU" else np.float32
    if count == 0:
        return np.zeros(info.shape, dtype=wanted)
    offset = data_start + info.start
    if info.dtype == "BF16":  # bfloat16 is the top half of a float32
        raw = np.frombuffer(buffer, dtype="<u2", count=count, offset=offset).astype(np.uint32) << 16
        return raw.view(np.float32).reshape(info.shape)
    return np.frombuffer(buffer, dtype=_NUMPY[info.dtype], count=count, offset=offset).astype(wanted).reshape(
        info.shape)


def read_header(source: str | os.PathLike | bytes, name: str | None = None) -> SafetensorsHeader:
    """The checked header of a safetensors file or buffer; no tensor is read."""
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as file:
            return _read_header(file.read(9), os.fstat(file.fileno()).st_size, file.read, name or str(source))
    view = memoryview(source)
    return _read_header(bytes(view[:9]), len(view), lambda n: bytes(view[9:9 + n]), name or "<bytes>")


def _read_bytes(data: bytes | bytearray | memoryview, name: str) -> LoRAWeights:
    header = read_header(data, name)
    tensors = {key: _decode(data, header.data_start, info) for key, info in _lora_entries(header, name).items()}
    weights = _assemble(tensors, header.metadata, name, keys=header.tensors)
    _check_magnitudes(weights, name)
    return weights


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
    weights = _assemble(tensors, {}, name, keys=[k for k in mapping if isinstance(k, str)])
    _check_magnitudes(weights, name)
    return weights


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


def _assemble(tensors: dict[str, np.ndarray], metadata: dict[str, str], name: str, keys=()) -> LoRAWeights:
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
        seen = ", ".join(sorted(keys or tensors)[:5]) or "none"
        raise LoRAFormatError(
            f"{name}: no LoRA tensors found (keys seen: {seen}). Expected PEFT (`.lora_A.weight`), "
            f"diffusers (`.lora.down.weight`, `.processor.to_q_lora.down.weight`) or kohya "
            f"(`.lora_down.weight`) naming.")
    if len(namings) > 1:
        raise LoRAFormatError(f"{name}: the tensors mix namings ({', '.join(sorted(namings))}); "
                              f"a LoRA file uses one naming")
    naming = namings.pop()
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
            values = np.asarray(alpha_value, dtype=np.float64).reshape(-1)
            if values.size != 1:
                raise LoRAFormatError(f"{name}: tensor {alpha_key!r} holds {values.size} values; an alpha is "
                                      f"one number")
            alpha = float(values[0])
            if not np.isfinite(alpha):
                raise LoRAFormatError(f"{name}: tensor {alpha_key!r} is not finite")
        layers[layer] = LoRALayer(layer, np.ascontiguousarray(a), np.ascontiguousarray(b), alpha)
    weights = LoRAWeights(layers=layers, naming=naming, metadata=metadata)
    peft_config = _peft_metadata(metadata)
    if peft_config is not None:
        _apply_peft_config(weights, peft_config, f"{name} (its lora_adapter_metadata)")
    return weights


#: The largest magnitude a feature may reach: a LoRA whose ``|alpha/r| * ||B|| * ||A||`` (Frobenius)
#: exceeds it would overflow float32 once scaled, and is refused like one holding NaN.
FLOAT32_MAX = float(np.finfo(np.float32).max)


def _frobenius(array: np.ndarray) -> float:
    """The Frobenius norm, summed in float64 (no float32 overflow, no float64 copy)."""
    return math.sqrt(float(np.einsum("ij,ij->", array, array, dtype=np.float64)))


def _check_magnitudes(weights: LoRAWeights, name: str) -> None:
    for layer in weights.values():
        scale = 1.0 if layer.scale is None else abs(layer.scale)
        norm_a, norm_b = _frobenius(layer.A), _frobenius(layer.B)
        bound = scale * norm_a * norm_b
        if not max(norm_a, norm_b, bound) <= FLOAT32_MAX:
            peak = max(float(np.abs(layer.A).max(initial=0)), float(np.abs(layer.B).max(initial=0)))
            raise LoRAFormatError(
                f"{name}: layer {layer.name!r} overflows float32 once scaled (values up to {peak:.3g}; "
                f"|alpha/r| x ||B|| x ||A|| = {bound:.3g}, float32 holds at most {FLOAT32_MAX:.3g}); the LoRA "
                f"diverged or was corrupted and cannot be analysed")


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


#: Largest adapter_config.json read beside a PEFT file.
MAX_ADAPTER_CONFIG_BYTES = 1_000_000


def _read_adapter_config(path: Path) -> dict:
    """PEFT's adapter_config.json, checked to be a small JSON object."""
    if path.stat().st_size > MAX_ADAPTER_CONFIG_BYTES:
        raise LoRAFormatError(f"{path}: {path.stat().st_size:,} bytes is more than an adapter config holds "
                              f"({MAX_ADAPTER_CONFIG_BYTES:,}); remove or fix it")
    try:
        config = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LoRAFormatError(f"{path}: not valid JSON ({exc}); fix or remove the adapter config") from None
    if not isinstance(config, dict):
        raise LoRAFormatError(f"{path}: not a JSON object; fix or remove the adapter config")
    return config


def _config_number(config: dict, key: str, where: str) -> float | None:
    value = config.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise LoRAFormatError(f"{where}: {key} is {value!r}; it must be a positive number")
    return float(value)


def _apply_peft_config(weights: LoRAWeights, config: dict, where: str) -> None:
    """Read each layer's rank and alpha from a PEFT ``LoraConfig`` (``r``, ``lora_alpha``, their
    ``rank_pattern`` / ``alpha_pattern`` and ``use_rslora``, where the scale is alpha / sqrt(r)).

    A rank the tensors contradict means the config belongs to another adapter: an error.  Alpha
    fills layers that carry none (kohya's alpha tensors take precedence).
    """
    for layer in weights.layers.values():
        rank = _pattern_value(config, "rank_pattern", "r", layer.name, where)
        if rank is not None and int(rank) != layer.rank:
            raise LoRAFormatError(f"{where}: r is {rank:g} for layer {layer.name!r} but its tensors have rank "
                                  f"{layer.rank}; the config belongs to another adapter: use the one saved with "
                                  f"these weights")
        if layer.alpha is None:
            alpha = _pattern_value(config, "alpha_pattern", "lora_alpha", layer.name, where)
            if alpha is not None and config.get("use_rslora"):
                alpha *= math.sqrt(layer.rank)  # rank-stabilised: scale alpha / sqrt(r) = (alpha sqrt(r)) / r
            layer.alpha = alpha


def _pattern_value(config: dict, pattern_key: str, key: str, layer: str, where: str) -> float | None:
    patterns = config.get(pattern_key) or {}
    if not isinstance(patterns, dict):
        raise LoRAFormatError(f"{where}: {pattern_key} is not a map of module names to numbers")
    for pattern, value in patterns.items():
        if re.search(rf"(^|\.){re.escape(pattern)}$", layer) or re.fullmatch(pattern, layer):
            return _config_number({key: value}, key, where)
    return _config_number(config, key, where)


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
    header = read_header(data)
    ordered: dict[str, Any] = {}
    if header.metadata:
        ordered["__metadata__"] = dict(sorted(header.metadata.items()))
    for info in sorted(header.tensors.values(), key=lambda i: (i.start, i.key)):
        ordered[info.key] = {"dtype": info.dtype, "shape": list(info.shape), "data_offsets": [info.start, info.end]}
    text = jsonio.dumps(ordered, compact=True).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data[header.data_start:]
