"""DSiRe prediction on an SD-1.5-sized benchmark: our vectorised vote vs one scikit-learn k-NN per layer.

90 training and 210 test models (the paper's medium range: 15 train and 35 test micro-datasets x
6 sizes), 132 layers, rank 32, classifiers on A, B and BA (396 per model). Times fit + predict of
`lora_wise.baselines.DSiRe` against the straightforward way, a `KNeighborsClassifier` per (layer,
matrix) and a majority vote, and checks both give the same predictions.

    python bench/baselines.py
Ends with `RESULT predict_s=<ours, seconds> speedup_vs_sklearn=<x>`.
"""

from __future__ import annotations

import time

import numpy as np

from lora_wise.baselines import DSiRe
from lora_wise.features import MATRICES, FeatureTable

LAYERS, RANK, TRAIN, TEST = 132, 32, 90, 210
SIZES = np.array([1, 10, 20, 30, 40, 50])


def table(rng, n) -> FeatureTable:
    sizes = rng.choice(SIZES, size=n)
    base = 1.0 / (1.0 + np.log(sizes))[:, None, None]
    sv = {m: np.sort(base * rng.random((n, LAYERS, RANK)), axis=2)[..., ::-1].astype(np.float32) for m in MATRICES}
    norms = {m: np.sqrt(np.square(v).sum(-1)) for m, v in sv.items()}
    return FeatureTable(layer_names=tuple(f"layer{i}" for i in range(LAYERS)), rank=RANK, sv=sv, norms=norms,
                        model_ids=[f"m{i}" for i in range(n)], dataset_sizes=sizes,
                        micro_dataset_indices=np.arange(n), steps=np.zeros(n, dtype=np.int64))


def sklearn_dsire(train: FeatureTable, test: FeatureTable) -> np.ndarray:
    from sklearn.neighbors import KNeighborsClassifier

    lo = min(train.sv[m].min() for m in MATRICES)
    hi = max(train.sv[m].max() for m in MATRICES)
    votes = []
    for m in MATRICES:
        for layer in range(LAYERS):
            x = (train.sv[m][:, layer].astype(np.float64) - lo) / (hi - lo)
            y = (test.sv[m][:, layer].astype(np.float64) - lo) / (hi - lo)
            votes.append(KNeighborsClassifier(n_neighbors=1, algorithm="brute").fit(x, train.dataset_sizes).predict(y))
    votes = np.stack(votes, axis=1)
    counts = (votes[..., None] == SIZES).sum(axis=1)
    return SIZES[np.argmax(counts, axis=1)]


def main() -> None:
    rng = np.random.default_rng(0)
    train, test = table(rng, TRAIN), table(rng, TEST)
    DSiRe().fit(train).predict(test)  # warm-up
    start = time.perf_counter()
    ours = DSiRe().fit(train).predict(test)
    t_ours = time.perf_counter() - start
    start = time.perf_counter()
    reference = sklearn_dsire(train, test)
    t_sklearn = time.perf_counter() - start
    agree = float((ours == reference).mean())
    print(f"{TEST} test models, {TRAIN} train, {LAYERS} layers x {len(MATRICES)} matrices, rank {RANK}")
    print(f"ours     {t_ours:7.3f} s   (fit + predict, vectorised)")
    print(f"sklearn  {t_sklearn:7.3f} s   (one KNeighborsClassifier per layer and matrix)")
    print(f"predictions agree on {agree:.1%} of models")
    print(f"RESULT predict_s={t_ours:.3f} speedup_vs_sklearn={t_sklearn / t_ours:.1f}")


if __name__ == "__main__":
    main()
