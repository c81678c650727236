"""Exact spectral features of LoRA layers: singular values of A, B and BA, and Frobenius norms.

For a layer ``delta W = s * B @ A`` (``B`` d x r, ``A`` r x k, ``s = alpha / r``) the
features are the singular values of ``A``, ``B`` and ``s * BA``, each zero-padded to
the rank, and their Frobenius norms.

``BA`` is d x k (up to 1280 x 1280 in SD 1.5) but has rank at most r, so its
singular values are never computed from the dense product: with thin QR
factorizations ``B = Q_B R_B`` and ``A^T = Q_A R_A``, ``BA = Q_B (R_B R_A^T) Q_A^T``
and the orthonormal factors do not change singular values, so
``sv(BA) = sv(R_B R_A^T)``, an r x r problem.

How, cheaply: the float64 Gram matrices ``A A^T`` and ``B^T B`` of all layers of
one shape come from one batched GEMM each, and their Cholesky factors are the R
factors (Cholesky QR: ``A A^T = L_A L_A^T``, ``R_A = L_A^T``; likewise ``R_B = L_B^T``).
The singular values of A and B are the square roots of the Grams' eigenvalues, and
those of BA the singular values of the r x r core ``L_B^T L_A``, each kind solved in
one batched LAPACK call.  For float32 input this is exact to float64 round-off, far
below float32 resolution.  Where A or B is rank deficient or conditioned worse than
``MAX_CHOLESKY_CONDITION`` (Cholesky QR squares the condition number), the layer takes
Householder QR of ``B`` and ``A^T`` and the SVD of the core instead, exact for any
input (all-zero factors included).

:class:`FeatureTable` holds the features of a whole dataset; it is filled one
model at a time, so memory does not grow with the size of the LoRAs read.
"""

from __future__ import annotations

import os
import queue
import threading
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence, TypeVar

import numpy as np

from .errors import DatasetLayoutError, LoRAFormatError
from .lora import LoRAWeights

#: The matrices DSiRe reads per layer.
MATRICES: tuple[str, ...] = ("A", "B", "BA")

T = TypeVar("T")


def prefetch(items: Iterable[T], depth: int = 1) -> Iterator[T]:
    """Iterate ``items`` in a background thread, at most ``depth`` items ahead.

    Reading the next LoRA (file I/O, safetensors parsing) overlaps with the features of the
    current one (BLAS and LAPACK release the GIL), while memory stays bounded: at most
    ``depth + 1`` models are alive at once.  Exceptions surface in the consumer.
    """
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                buffer.put((True, item))
            buffer.put((True, done))
        except BaseException as exc:  # handed to the consumer
            buffer.put((False, exc))

    thread = threading.Thread(target=produce, name="lora-wise-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            ok, item = buffer.get()
            if not ok:
                raise item
            if item is done:
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                buffer.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.01)


@dataclass
class ModelFeatures:
    """Features of one LoRA: per matrix, singular values (L, r) and Frobenius norms (L,)."""

    layer_names: tuple[str, ...]
    sv: dict[str, np.ndarray]
    norms: dict[str, np.ndarray]

    @property
    def rank(self) -> int:
        return self.sv["A"].shape[1]


def _workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    """One small process-wide pool: BLAS and LAPACK release the GIL, and OpenBLAS does not
    spread r x k GEMMs or batches of tiny eigenproblems over cores by itself."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(_workers(), thread_name_prefix="lora-wise-features")
        return _POOL


def _chunks(index: list[int], parts: int) -> list[list[int]]:
    size = -(-len(index) // parts)
    return [index[i:i + size] for i in range(0, len(index), size)]


class SpectralExtractor:
    """Computes :class:`ModelFeatures`; keeps its float64 work buffers across models.

    ``rank`` fixes the length of the singular-value vectors (default: the LoRA's
    largest layer rank); layers of lower rank are zero-padded.  Layers are processed
    in chunks on a small thread pool (``workers``, default: the cores, at most 4).
    """

    def __init__(self, rank: int | None = None, workers: int | None = None):
        self.rank = rank
        self.workers = workers or _workers()
        self._local = threading.local()  # per-thread float64 buffers, reused across models

    def _buffer(self, shape: tuple[int, ...]) -> np.ndarray:
        buffers = self._local.__dict__.setdefault("buffers", {})
        buf = buffers.get(shape)
        if buf is None:
            buf = buffers[shape] = np.empty(shape, dtype=np.float64)
        return buf

    def _map(self, fn, items: list) -> list:
        if self.workers == 1 or len(items) == 1:
            return [fn(item) for item in items]
        return list(_pool().map(fn, items))

    def __call__(self, weights: LoRAWeights) -> ModelFeatures:
        names = tuple(weights)
        rank = self.rank or weights.rank
        if weights.rank > rank:
            raise LoRAFormatError(f"LoRA has rank {weights.rank} but features were asked for rank {rank}")
        n = len(names)
        sv = {m: np.zeros((n, rank), dtype=np.float32) for m in MATRICES}
        groups: dict[tuple[int, int, int], list[int]] = defaultdict(list)
        for i, name in enumerate(names):
            layer = weights[name]
            groups[(layer.rank, *layer.shape)].append(i)
        # Work items: chunks of layers of one shape, so that threads share the work evenly.
        items = [((r, d, k), chunk) for (r, d, k), index in groups.items()
                 for chunk in _chunks(index, self.workers)]

        def run(item):
            (r, d, k), index = item
            layers = [weights[names[i]] for i in index]
            if min(d, k) < r:  # tiny layers: the Gram matrices are singular by construction
                return r, index, None, _householder(layers)
            stacks, a64, b64 = self._cores(layers, r, d, k)
            if stacks is None:  # A or B is (nearly) rank deficient: Cholesky QR cannot give its R exactly
                return r, index, None, _householder(layers, a64, b64)
            return r, index, stacks, None

        # r x r cores grouped by rank, so all small SVDs of one rank are solved together.
        cores: dict[int, list[tuple[list[int], np.ndarray]]] = defaultdict(list)
        for r, index, stacks, exact in self._map(run, items):
            if exact is not None:
                self._store(sv, index, exact)
            else:
                cores[r].append((index, stacks))
        for r, parts in cores.items():
            index = [i for part_index, _ in parts for i in part_index]
            stacked = np.concatenate([stack for _, stack in parts], axis=1)  # (3, n, r, r)
            pieces = self._map(_spectra, np.array_split(stacked, min(self.workers, len(index)), axis=1))
            values = np.concatenate(pieces, axis=1)  # (3, n, r)
            self._store(sv, index, dict(zip(MATRICES, values)))
            # Cholesky QR squares a factor's condition number: where A or B is ill-conditioned
            # its small singular values (and BA's) are redone by Householder QR.
            ill = np.flatnonzero(~(_well_conditioned(values[0]) & _well_conditioned(values[1])))
            if len(ill):
                redo = [index[j] for j in ill]
                self._store(sv, redo, _householder([weights[names[i]] for i in redo]))
        scales = np.array([1.0 if weights[name].scale is None else abs(weights[name].scale) for name in names])
        sv["BA"] *= scales[:, None].astype(np.float32)
        norms = {m: np.sqrt(np.square(sv[m], dtype=np.float64).sum(axis=1)).astype(np.float32) for m in MATRICES}
        return ModelFeatures(layer_names=names, sv=sv, norms=norms)

    @staticmethod
    def _store(sv: dict, index: list[int], values: dict) -> None:
        for m in MATRICES:
            sv[m][index, : values[m].shape[1]] = values[m]

    def _cores(self, layers: list, r: int, d: int, k: int):
        """(3, n, r, r): the Grams ``A A^T`` and ``B^T B`` and the core of BA (None where a
        Gram is numerically singular, so Cholesky fails), and the float64 factors.

        Cholesky QR: with ``A A^T = L_A L_A^T`` and ``B^T B = L_B L_B^T``, ``R_A = L_A^T`` is
        the R factor of ``A^T`` and ``R_B = L_B^T`` that of ``B``, so sv(BA) = sv(R_B R_A^T)
        = sv(L_B^T L_A), an r x r matrix.  The core's SVD (not the eigenvalues of its Gram)
        keeps BA's conditioning unsquared; see :func:`_spectra`.
        """
        n = len(layers)
        a64 = self._buffer((n, r, k))
        b64 = self._buffer((n, d, r))
        for j, layer in enumerate(layers):
            a64[j] = layer.A
            b64[j] = layer.B
        gram_a = np.matmul(a64, a64.transpose(0, 2, 1))  # A A^T  (n, r, r)
        gram_b = np.matmul(b64.transpose(0, 2, 1), b64)  # B^T B  (n, r, r)
        try:
            lower_a = np.linalg.cholesky(gram_a)
            lower_b = np.linalg.cholesky(gram_b)
        except np.linalg.LinAlgError:  # a factor is numerically rank deficient
            return None, a64, b64
        core = np.matmul(lower_b.transpose(0, 2, 1), lower_a)
        return np.stack([gram_a, gram_b, core]), a64, b64


#: Largest condition number of A or B taken by Cholesky QR: its relative error in the smallest
#: singular value is about eps * cond**2 (here at most 2e-8, below float32 resolution).
MAX_CHOLESKY_CONDITION = 1e4


def _well_conditioned(values: np.ndarray) -> np.ndarray:
    """Per row of descending singular values: is the matrix well enough conditioned for Cholesky QR?"""
    return values[:, -1] * MAX_CHOLESKY_CONDITION > values[:, 0]


def _spectra(stack: np.ndarray) -> np.ndarray:
    """(3, m, r) descending singular values of A, B and BA from :meth:`SpectralExtractor._cores`.

    A's and B's from the eigenvalues of their Grams (as accurate as their Cholesky factors,
    and faster than an SVD); BA's from the SVD of its core.
    """
    grams = np.linalg.eigvalsh(stack[:2])[..., ::-1]
    return np.concatenate([np.sqrt(np.clip(grams, 0.0, None)), np.linalg.svd(stack[2:], compute_uv=False)])


def _householder(layers: list, a64: np.ndarray | None = None, b64: np.ndarray | None = None) -> dict:
    """Householder QR path: exact for rank-deficient, all-zero and tiny factors."""
    out: dict[str, list] = {m: [] for m in MATRICES}
    for j, layer in enumerate(layers):
        a = a64[j] if a64 is not None else layer.A.astype(np.float64)
        b = b64[j] if b64 is not None else layer.B.astype(np.float64)
        r_a = np.linalg.qr(a.T, mode="r")  # A^T = Q_A R_A
        r_b = np.linalg.qr(b, mode="r")  # B = Q_B R_B
        out["A"].append(np.linalg.svd(r_a, compute_uv=False))
        out["B"].append(np.linalg.svd(r_b, compute_uv=False))
        out["BA"].append(np.linalg.svd(r_b @ r_a.T, compute_uv=False))
    width = max(len(v) for m in MATRICES for v in out[m])
    return {m: np.stack([np.pad(v, (0, width - len(v))) for v in out[m]]) for m in MATRICES}


def extract(weights: LoRAWeights, rank: int | None = None) -> ModelFeatures:
    """Features of one LoRA (see :class:`SpectralExtractor`)."""
    return SpectralExtractor(rank)(weights)


@dataclass
class FeatureTable:
    """Features of many LoRA snapshots with their labels, filled one model at a time.

    ``sv[m]`` is (N, L, r) and ``norms[m]`` (N, L) for m in A, B, BA; row i belongs
    to ``model_ids[i]`` with label ``dataset_sizes[i]``.
    """

    layer_names: tuple[str, ...]
    rank: int
    sv: dict[str, np.ndarray] = field(repr=False)
    norms: dict[str, np.ndarray] = field(repr=False)
    model_ids: list[str]
    dataset_sizes: np.ndarray
    micro_dataset_indices: np.ndarray
    steps: np.ndarray

    def __len__(self) -> int:
        return len(self.model_ids)

    def subset(self, rows: Sequence[int] | np.ndarray) -> "FeatureTable":
        rows = np.asarray(rows, dtype=np.int64)
        return FeatureTable(
            layer_names=self.layer_names, rank=self.rank,
            sv={m: v[rows] for m, v in self.sv.items()},
            norms={m: v[rows] for m, v in self.norms.items()},
            model_ids=[self.model_ids[i] for i in rows], dataset_sizes=self.dataset_sizes[rows],
            micro_dataset_indices=self.micro_dataset_indices[rows], steps=self.steps[rows])

    def rows_of(self, micro_dataset_indices: Iterable[int]) -> np.ndarray:
        """Row numbers of the models whose micro-dataset is among ``micro_dataset_indices``."""
        return np.flatnonzero(np.isin(self.micro_dataset_indices, list(micro_dataset_indices)))

    @classmethod
    def build(cls, records: Iterable[tuple[dict, LoRAWeights]], rank: int | None = None,
              expected: int | None = None) -> "FeatureTable":
        """Stream ``(labels, weights)`` pairs into a table (the next pair is read while the
        current one's features are computed; see :func:`prefetch`).

        ``labels`` needs ``model_id``, ``dataset_size``, ``micro_dataset_index`` and ``step``.
        Every model must adapt the same layers as the first one.
        """
        extractor = SpectralExtractor(rank)
        chunks: dict[str, list] = defaultdict(list)
        meta: dict[str, list] = defaultdict(list)
        layer_names: tuple[str, ...] | None = None
        for labels, weights in prefetch(records):
            feats = extractor(weights)
            if layer_names is None:
                layer_names = feats.layer_names
                extractor.rank = feats.rank
            elif feats.layer_names != layer_names:
                missing = sorted(set(layer_names) - set(feats.layer_names))
                extra = sorted(set(feats.layer_names) - set(layer_names))
                raise LoRAFormatError(
                    f"{labels.get('model_id')}: its layers differ from the first model's "
                    f"(missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
                    f"extra {extra[:3]}{'...' if len(extra) > 3 else ''}); a table needs one architecture")
            for m in MATRICES:
                chunks["sv_" + m].append(feats.sv[m])
                chunks["norm_" + m].append(feats.norms[m])
            for key in ("model_id", "dataset_size", "micro_dataset_index", "step"):
                meta[key].append(labels[key])
        if layer_names is None:
            raise DatasetLayoutError("no models to build a feature table from")
        return cls(
            layer_names=layer_names, rank=extractor.rank,
            sv={m: np.stack(chunks["sv_" + m]) for m in MATRICES},
            norms={m: np.stack(chunks["norm_" + m]) for m in MATRICES},
            model_ids=list(meta["model_id"]),
            dataset_sizes=np.asarray(meta["dataset_size"], dtype=np.int64),
            micro_dataset_indices=np.asarray(meta["micro_dataset_index"], dtype=np.int64),
            steps=np.asarray(meta["step"], dtype=np.int64))
