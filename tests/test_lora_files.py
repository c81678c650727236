"""LoRA files are checked from their header first, and read lazily.

Hostile and faulty safetensors files are made byte by byte here (a header is JSON after an
8-byte length); good ones by ``safetensors`` itself, which also checks that the hand-made valid
files really are valid.  What is measured: a file whose header claims more than it holds is
refused without reading a tensor, and peak memory stays flat however large the file is
(tracemalloc in this process, the resident set of a fresh process).
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save

from lora_wise import lora
from lora_wise.lora import LoRAFormatError, read_header, read_lora

LAYER = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
RNG = np.random.default_rng(0)
A = RNG.standard_normal((4, 16)).astype(np.float32)
B = RNG.standard_normal((16, 4)).astype(np.float32)
GOOD = {f"unet.{LAYER}.lora_A.weight": A, f"unet.{LAYER}.lora_B.weight": B}


def _raw_file(path, header: dict, data: bytes = b"", size: int | None = None):
    """A safetensors file from a header and data as given (lies included); ``size`` extends it sparsely."""
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(text)) + text + data)
        if size is not None:
            out.truncate(size)  # a hole: no blocks on disk, read back as zeros
    return path


def _entry(dtype, shape, start, end):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": [start, end]}


def _good_header():
    return {f"unet.{LAYER}.lora_A.weight": _entry("F32", (4, 16), 0, 256),
            f"unet.{LAYER}.lora_B.weight": _entry("F32", (16, 4), 256, 512)}


def _good_data():
    return A.tobytes() + B.tobytes()


def test_hand_made_files_are_what_safetensors_reads(tmp_path):
    path = _raw_file(tmp_path / "hand.safetensors", _good_header(), _good_data())
    with safe_open(str(path), "numpy") as f:  # the format's own reader agrees the file is valid
        np.testing.assert_array_equal(f.get_tensor(f"unet.{LAYER}.lora_A.weight"), A)
    weights = read_lora(path)
    np.testing.assert_array_equal(weights[LAYER].A, A)
    np.testing.assert_array_equal(weights[LAYER].B, B)
    same = tmp_path / "lib.safetensors"
    same.write_bytes(save(GOOD))
    assert read_header(same).tensors == read_header(path).tensors


def test_a_header_that_claims_2_gb_in_a_small_file_is_refused_without_reading(tmp_path):
    header = _good_header()
    header[f"unet.{LAYER}.lora_B.weight"] = _entry("F32", (16, 32_000_000), 256, 256 + 2_048_000_000)
    path = _raw_file(tmp_path / "liar.safetensors", header, _good_data())
    tracemalloc.start()
    try:
        with pytest.raises(LoRAFormatError, match=r"declares bytes 256 to 2,048,000,256 of the data but the file "
                                                  r"holds only 512: its header lies or the file is truncated"):
            read_lora(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000, peak  # nothing near 2 GB was allocated
    claims_header = tmp_path / "header-liar.safetensors"
    claims_header.write_bytes(struct.pack("<Q", 2_000_000_000) + b"{}")
    with pytest.raises(LoRAFormatError, match=r"declares 2,000,000,000 bytes of JSON, more than the 100,000,000"):
        read_lora(claims_header)
    claims_header.write_bytes(struct.pack("<Q", 50_000) + b"{}")
    with pytest.raises(LoRAFormatError, match=r"declares 50,000 bytes of JSON but the file holds 2 bytes"):
        read_lora(claims_header)
    for source in (path, path.read_bytes()):  # a dataset row's bytes are checked the same way
        with pytest.raises(LoRAFormatError, match="header lies"):
            read_lora(source)


@pytest.mark.parametrize("case, match", [
    ("overlap", r"tensors 'unet\..*lora_A.weight' and 'unet\..*lora_B.weight' overlap"),
    ("hole", r"64 bytes before tensor .*lora_B.weight' belong to no tensor"),
    ("trailing", r"its tensors end at byte 512 of the data but the file holds 576"),
    ("unknown dtype", r"dtype 'F12', which safetensors does not define"),
    ("shape and span differ", r"\(F32, shape \(16, 5\)\) needs 320 bytes but its offsets span 256"),
    ("negative offsets", r"data offsets \[256, 0\]"),
    ("integer factor", r"dtype I32; the LoRA's down and up \(A and B\) matrices must be floating point"),
    ("bad json", r"its header is not JSON"),
    ("not an object", r"its header is not a JSON object"),
    ("metadata", r"__metadata__ is not a map of strings"),
])
def test_malformed_headers_are_refused_naming_the_fault(case, match, tmp_path):
    header, data = _good_header(), _good_data()
    b_key = f"unet.{LAYER}.lora_B.weight"
    if case == "overlap":
        header[b_key]["data_offsets"] = [192, 448]
    elif case == "hole":
        header[b_key]["data_offsets"] = [320, 576]
        data = A.tobytes() + bytes(64) + B.tobytes()
    elif case == "trailing":
        data += bytes(64)
    elif case == "unknown dtype":
        header[b_key]["dtype"] = "F12"
    elif case == "shape and span differ":
        header[b_key]["shape"] = [16, 5]
    elif case == "negative offsets":
        header[b_key]["data_offsets"] = [256, 0]
    elif case == "integer factor":
        header[b_key]["dtype"] = "I32"
    elif case == "metadata":
        header["__metadata__"] = {"format": 3}
    path = _raw_file(tmp_path / "bad.safetensors", header, data)
    if case in ("bad json", "not an object"):
        text = b"{not json" if case == "bad json" else b"[1, 2]  "
        path.write_bytes(struct.pack("<Q", len(text)) + text)
    with pytest.raises(LoRAFormatError, match=match):
        read_lora(path)


def test_documented_limits_on_tensor_count_lora_bytes_and_header(tmp_path, monkeypatch):
    path = tmp_path / "good.safetensors"
    path.write_bytes(save(GOOD))
    monkeypatch.setattr(lora, "MAX_TENSORS", 1)
    with pytest.raises(LoRAFormatError, match=r"lists 2 tensors, more than the 1 a LoRA file may hold"):
        read_lora(path)
    monkeypatch.setattr(lora, "MAX_TENSORS", 100_000)
    monkeypatch.setattr(lora, "MAX_LORA_BYTES", 500)
    with pytest.raises(LoRAFormatError, match=r"LoRA tensors declare 512 bytes, more than the 500"):
        read_lora(path)
    monkeypatch.setattr(lora, "MAX_LORA_BYTES", 8 * 1024 ** 3)
    monkeypatch.setattr(lora, "MAX_HEADER_BYTES", 64)
    with pytest.raises(LoRAFormatError, match=r"bytes of JSON, more than the 64 bytes"):
        read_lora(path)


def _sparse_lora(path, big: int, with_lora: bool = True):
    """A valid file of ``big`` + 512 bytes of data: a huge non-LoRA tensor (a hole on disk), then the LoRA."""
    header = {"text_model.embeddings.weight": _entry("F32", (big // 4,), 0, big)}
    if with_lora:
        header[f"unet.{LAYER}.lora_A.weight"] = _entry("F32", (4, 16), big, big + 256)
        header[f"unet.{LAYER}.lora_B.weight"] = _entry("F32", (16, 4), big + 256, big + 512)
    else:
        header["text_model.final.weight"] = _entry("F32", (128,), big, big + 512)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(text)) + text)
        out.seek(8 + len(text) + big)
        out.write(_good_data())
    return path


GIB = 1024 ** 3


def test_a_large_sparse_file_is_read_lazily_with_flat_memory(tmp_path):
    path = _sparse_lora(tmp_path / "big.safetensors", GIB)
    assert path.stat().st_size > GIB
    with safe_open(str(path), "numpy") as f:  # valid for safetensors too
        expected_b = f.get_tensor(f"unet.{LAYER}.lora_B.weight")
    tracemalloc.start()
    try:
        weights = read_lora(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(weights[LAYER].A, A)
    np.testing.assert_array_equal(weights[LAYER].B, expected_b)
    assert peak < 1_000_000, peak  # the LoRA's 512 bytes and bookkeeping, not the file's 1 GiB
    with pytest.raises(LoRAFormatError, match="no LoRA tensors found"):  # refused from the header alone
        read_lora(_sparse_lora(tmp_path / "not-lora.safetensors", GIB, with_lora=False))


def _peak_rss(path) -> int:
    """Peak resident set (bytes) of a fresh process that reads ``path`` with read_lora (0 if it fails)."""
    code = ("import resource, sys\nfrom lora_wise.lora import read_lora\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "read_lora(sys.argv[1])\n"
            "print(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    before, after = map(int, done.stdout.split())
    return (after - before) * 1024  # ru_maxrss is in KiB on Linux


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss units are Linux's")
def test_peak_memory_does_not_grow_with_the_file(tmp_path):
    """The resident set grows by the same few MB for a 1 MiB and a 2 GiB file (both mostly one unread tensor)."""
    small = _peak_rss(_sparse_lora(tmp_path / "small.safetensors", 1024 ** 2))
    large = _peak_rss(_sparse_lora(tmp_path / "large.safetensors", 2 * GIB))
    assert large < small + 16 * 1024 ** 2, (small, large)
    assert large < 64 * 1024 ** 2, large


def test_values_that_overflow_once_scaled_are_refused_like_nan(tmp_path):
    huge = B.copy()
    huge[3, 1] = 3e38  # finite in float32, but ||B|| ||A|| overflows it
    with pytest.raises(LoRAFormatError, match=r"overflows float32 once scaled \(values up to 3e\+38"):
        read_lora(save({f"unet.{LAYER}.lora_A.weight": A, f"unet.{LAYER}.lora_B.weight": huge}))
    alpha = {f"lora_unet_{LAYER.replace('.', '_')}.lora_down.weight": A,
             f"lora_unet_{LAYER.replace('.', '_')}.lora_up.weight": B,
             f"lora_unet_{LAYER.replace('.', '_')}.alpha": np.array(3e38, np.float32)}  # the scale overflows
    with pytest.raises(LoRAFormatError, match="overflows float32 once scaled"):
        read_lora(save(alpha))
    large = B * np.float32(1e15)  # large but every feature stays finite: read, and left to the OOD test
    assert np.isfinite(read_lora(save({f"unet.{LAYER}.lora_A.weight": A, f"unet.{LAYER}.lora_B.weight": large}))
                       [LAYER].B).all()


def test_integer_alpha_is_read_and_other_alpha_types_refused(tmp_path):
    stem = f"lora_unet_{LAYER.replace('.', '_')}"
    tensors = {f"{stem}.lora_down.weight": A, f"{stem}.lora_up.weight": B}
    for dtype in (np.int64, np.int32, np.uint8, np.float16):
        weights = read_lora(save({**tensors, f"{stem}.alpha": np.array(2, dtype)}))
        assert weights[LAYER].alpha == 2.0 and weights[LAYER].scale == 0.5
    header = {f"{stem}.alpha": _entry("BOOL", (), 0, 1), f"{stem}.lora_down.weight": _entry("F32", (4, 16), 1, 257)}
    path = _raw_file(tmp_path / "bool.safetensors", header, b"\x01" + A.tobytes())
    with pytest.raises(LoRAFormatError, match=r"dtype BOOL; a LoRA alpha is a number"):
        read_lora(path)
    with pytest.raises(LoRAFormatError, match="holds 2 values; an alpha is one number"):
        read_lora(save({**tensors, f"{stem}.alpha": np.array([2, 2], np.int64)}))
