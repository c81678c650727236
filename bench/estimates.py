"""Trustworthy estimates, measured: accuracy, held-out interval coverage, other training lengths, OOD flags.

For each miniature config (or ``--config``), the builder really trains (its batched trainer on the
miniature backbone) a bench config derived from it in the registry, ``<config>_estimates``:

* twice its micro-datasets -- one half are the **references**, the other half is **held out**
  (micro-datasets the references never saw);
* its dataset sizes plus the integer midpoints between consecutive ones (sizes no reference has);
* its snapshot steps plus one **half as long as its shortest** and one **twice as long as its longest**
  (training lengths no reference covers).

The references are what ``lora-wise build --config <config>`` gives: the config's sizes, at every
one of its snapshot steps.  Each half of the micro-datasets is the references once, the other half
held out, so every micro-dataset is held out once.  Every held-out snapshot goes through
``DatasetSizeEstimator.estimate``, as ``lora-wise predict`` does, and is compared with its true size
and step.  Printed per config:

* **accuracy at the checkpoint**: the classifier's estimate equals the true size (held-out, reference
  sizes, the config's checkpoint step), beside the estimator before it knew steps (DSiRe fitted on the
  checkpoint snapshots only, no interval, no flag);
* **held-out coverage** of both intervals (the classifier's, the continuous estimate's) at the
  reference steps and sizes, with their widths -- goal: within 5 points of the stated coverage;
* the continuous estimate **between the reference sizes**: coverage and mean absolute error;
* how often the **step** is estimated right, and the **false alarms** of the OOD test (held-out LoRAs
  trained like the references that are flagged) against its stated rate;
* **other training lengths** (every snapshot step but the checkpoint, the uncovered ones included): the
  share of answers that are right (the true size inside the interval) or flagged out of distribution
  -- goal: every one -- and the same share for the estimator before.

    python bench/estimates.py [--config mini_low_r8] [--micro-datasets N] [--coverage 0.9] [--out DIR]

The build is resumable and kept (default: under the cache folder), so a second run only measures.
Ends with ``RESULT <config>.<measure>=<value> ... coverage_goal=met|missed other_steps_goal=met|missed``.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
import warnings

import numpy as np


def bench_config(name: str, micro_datasets: int | None):
    """The registered bench config derived from ``name``, and the reference part: (config, M, sizes, steps)."""
    from lora_wise import configs as registry

    cfg = registry.get_config(name)
    m = micro_datasets or cfg.num_micro_datasets
    sizes = tuple(cfg.dataset_sizes)
    between = tuple((a + b) // 2 for a, b in zip(sizes, sizes[1:]) if (a + b) // 2 not in (a, b))
    shorter, longer = min(cfg.snapshot_steps) // 2, 2 * max(cfg.snapshot_steps)
    derived = dataclasses.replace(
        cfg, name=f"{cfg.name}_estimates", aliases=(),
        description=f"bench/estimates.py: {cfg.name} with {2 * m} micro-datasets, sizes between, steps {shorter} "
                    f"and {longer}.",
        dataset_sizes=tuple(sorted(sizes + between)), num_micro_datasets=2 * m, num_train_micro_datasets=m,
        micro_dataset_names=(), snapshot_steps=tuple(sorted({shorter, *cfg.snapshot_steps, longer})),
        recipe=dataclasses.replace(cfg.recipe, max_train_steps=longer))
    registry.register_config(derived, replace=True)
    return derived, cfg, m


def measure(derived, cfg, m: int, out: str, coverage: float) -> dict:
    """Estimate every held-out snapshot, each half of the micro-datasets serving as references in turn."""
    from lora_wise.baselines import DSiRe
    from lora_wise.data import ALL_STEPS, feature_table, iter_models
    from lora_wise.estimate import DatasetSizeEstimator, EstimateWarning, ReferenceProfile

    table = feature_table(out, derived.name, step=ALL_STEPS, progress=True)
    ref_sizes, ref_steps = np.array(cfg.dataset_sizes), np.array(cfg.snapshot_steps)
    half = table.micro_dataset_indices // m
    _, first = next(iter_models(out, derived.name))
    profile = ReferenceProfile(shapes={n: layer.shape for n, layer in first.items()}, rank=cfg.rank,
                               scales={n: 1.0 if layer.scale is None else layer.scale for n, layer in first.items()})
    rows, calibrate_s, old, references = [], [], [], 0
    for reference_half in (0, 1):
        is_ref = (half == reference_half) & np.isin(table.dataset_sizes, ref_sizes) & np.isin(table.steps, ref_steps)
        reference = table.subset(np.flatnonzero(is_ref))
        references = len(reference)
        start = time.perf_counter()
        estimator = DatasetSizeEstimator(reference, profile, derived, coverage=coverage, progress=True)
        estimator.calibration()
        calibrate_s.append(time.perf_counter() - start)
        before = DSiRe().fit(reference.subset(np.flatnonzero(reference.steps == cfg.checkpoint_step)))
        held = table.subset(np.flatnonzero(half != reference_half))
        before_pred = dict(zip(zip(held.model_ids, held.steps.tolist()), before.predict(held).tolist()))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", EstimateWarning)
            for labels, weights in iter_models(out, derived.name, step=ALL_STEPS, progress=True):
                if labels["micro_dataset_index"] // m == reference_half:
                    continue
                est = estimator.estimate(weights, name=f"{labels['model_id']}@{labels['step']}")
                rows.append((labels["dataset_size"], labels["step"], est, reference_half))
                old.append(before_pred[(labels["model_id"], labels["step"])])

    n = np.array([r[0] for r in rows])
    step = np.array([r[1] for r in rows])
    ests = [r[2] for r in rows]
    pred = np.array([e.prediction for e in ests])
    est_step = np.array([e.step for e in ests])
    inside = np.array([e.interval.low <= t <= e.interval.high for t, e in zip(n, ests)])
    c_inside = np.array([e.continuous_interval.low <= t <= e.continuous_interval.high for t, e in zip(n, ests)])
    width = np.array([np.searchsorted(ref_sizes, e.interval.high) - np.searchsorted(ref_sizes, e.interval.low) + 1
                      for e in ests])
    c_factor = np.array([e.continuous_interval.high / e.continuous_interval.low for e in ests])
    c_error = np.abs(np.array([e.continuous for e in ests]) - n)
    flagged = np.array([not e.in_distribution for e in ests])
    old = np.array(old)
    direction = np.array([r[3] for r in rows])
    at_ref_size = np.isin(n, ref_sizes)
    covered = np.isin(step, ref_steps)
    checkpoint = at_ref_size & (step == cfg.checkpoint_step)
    in_dist = at_ref_size & covered
    other = at_ref_size & (step != cfg.checkpoint_step)
    uncovered = at_ref_size & ~covered
    between = ~at_ref_size & covered
    r = {
        "checkpoint_accuracy": (pred[checkpoint] == n[checkpoint]).mean(),
        "checkpoint_accuracy_before": (old[checkpoint] == n[checkpoint]).mean(),
        "coverage": inside[in_dist].mean(),
        "continuous_coverage": c_inside[in_dist].mean(),
        "interval_sizes": width[in_dist].mean(),
        "continuous_factor": np.median(c_factor[in_dist]),
        "between_coverage": c_inside[between].mean() if between.any() else float("nan"),
        "between_mae": c_error[between].mean() if between.any() else float("nan"),
        "continuous_mae": c_error[in_dist].mean(),
        "step_accuracy": (est_step[in_dist] == step[in_dist]).mean(),
        "false_alarms": flagged[in_dist].mean(),
        "other_steps_right_or_flagged": (inside[other] | flagged[other]).mean(),
        "other_steps_point_right": (pred[other] == n[other]).mean(),
        "other_steps_before_right": (old[other] == n[other]).mean(),
        "uncovered_flagged": flagged[uncovered].mean(),
        "calibrate_s": max(calibrate_s),
        "coverage_by_half": [inside[in_dist & (direction == d)].mean() for d in (0, 1)],
        "continuous_coverage_by_half": [c_inside[in_dist & (direction == d)].mean() for d in (0, 1)],
    }
    per_step = {int(s): {"point right": (pred[at_ref_size & (step == s)] == n[at_ref_size & (step == s)]).mean(),
                         "in interval": inside[at_ref_size & (step == s)].mean(),
                         "flagged": flagged[at_ref_size & (step == s)].mean(),
                         "step right": (est_step[at_ref_size & (step == s)] == s).mean(),
                         "before right": (old[at_ref_size & (step == s)] == n[at_ref_size & (step == s)]).mean()}
                for s in sorted(set(step.tolist()))}
    return {"result": r, "per_step": per_step, "references": references, "held_out": len(rows),
            "false_alarm_rate": ests[0].ood["false_alarm_rate"]}


def report(name: str, derived, cfg, m: int, measured: dict, coverage: float) -> None:
    r = measured["result"]
    level = f"{100 * coverage:g}%"
    print(f"\n== {name}: references {m} micro-datasets x sizes {', '.join(map(str, cfg.dataset_sizes))} x steps "
          f"{', '.join(map(str, cfg.snapshot_steps))} ({measured['references']} snapshots; calibrated in "
          f"{r['calibrate_s']:.1f} s); held out the other {m} micro-datasets x sizes "
          f"{', '.join(map(str, derived.dataset_sizes))} x steps {', '.join(map(str, derived.snapshot_steps))}; "
          f"each half is the references once ({measured['held_out']} held-out snapshots in all)")
    print(f"accuracy at the checkpoint (step {cfg.checkpoint_step}): {r['checkpoint_accuracy']:.3f} "
          f"(before, checkpoint-only references: {r['checkpoint_accuracy_before']:.3f}; chance "
          f"{1 / len(cfg.dataset_sizes):.3f})")
    halves = lambda values: "/".join(f"{v:.3f}" for v in values)  # noqa: E731
    print(f"held-out coverage at {level}, reference steps and sizes: classifier interval {r['coverage']:.3f} "
          f"(halves {halves(r['coverage_by_half'])}; mean {r['interval_sizes']:.2f} of {len(cfg.dataset_sizes)} "
          f"sizes), continuous interval {r['continuous_coverage']:.3f} (halves "
          f"{halves(r['continuous_coverage_by_half'])}; median high/low {r['continuous_factor']:.2f}; MAE "
          f"{r['continuous_mae']:.2f} images)")
    if not np.isnan(r["between_coverage"]):
        print(f"continuous estimate at sizes between the references: coverage {r['between_coverage']:.3f}, "
              f"MAE {r['between_mae']:.2f} images")
    print(f"step estimated right: {r['step_accuracy']:.3f}; false alarms {r['false_alarms']:.3f} "
          f"(stated rate {measured['false_alarm_rate']:.3f})")
    print(f"other training lengths: right (size in the interval) or flagged {r['other_steps_right_or_flagged']:.3f}; "
          f"point estimate right {r['other_steps_point_right']:.3f}, before {r['other_steps_before_right']:.3f}; "
          f"lengths no reference covers flagged {r['uncovered_flagged']:.3f}")
    print(f"{'step':>6} {'point right':>12} {'in interval':>12} {'flagged':>8} {'step right':>11} {'before right':>13}")
    for s, v in measured["per_step"].items():
        mark = " <- checkpoint" if s == cfg.checkpoint_step else "" if s in cfg.snapshot_steps else " <- no reference"
        print(f"{s:>6} {v['point right']:>12.3f} {v['in interval']:>12.3f} {v['flagged']:>8.3f} "
              f"{v['step right']:>11.3f} {v['before right']:>13.3f}{mark}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", help="miniature config to derive from (repeatable; default: all)")
    parser.add_argument("--micro-datasets", type=int, help="reference micro-datasets, as many held out "
                                                           "(default: the config's own number)")
    parser.add_argument("--coverage", type=float, default=0.9, help="stated coverage of the intervals")
    parser.add_argument("--out", help="build folder (default: under the cache folder; resumable)")
    args = parser.parse_args()

    from lora_wise.builder.build import BuildOptions, build
    from lora_wise.cache import cache_dir
    from lora_wise.configs import MINIATURE_CONFIGS

    out = args.out or str(cache_dir("bench", "estimates"))
    # every bench config is registered, so the folder's card can name those an earlier run built
    registered = {name: bench_config(name, args.micro_datasets) for name in MINIATURE_CONFIGS}
    plans = [registered[name] if name in registered else bench_config(name, args.micro_datasets)
             for name in (args.config or MINIATURE_CONFIGS)]
    start = time.perf_counter()
    summary = build([derived.name for derived, _, _ in plans], BuildOptions(out=out))
    print(summary.format(), f"({time.perf_counter() - start:.0f} s with the checks)")
    results, goals = {}, {"coverage_goal": True, "other_steps_goal": True}
    for derived, cfg, m in plans:
        measured = measure(derived, cfg, m, out, args.coverage)
        report(cfg.name, derived, cfg, m, measured, args.coverage)
        r = measured["result"]
        results[cfg.name] = r
        goals["coverage_goal"] &= abs(r["coverage"] - args.coverage) <= 0.05 and \
            abs(r["continuous_coverage"] - args.coverage) <= 0.05
        goals["other_steps_goal"] &= r["other_steps_right_or_flagged"] == 1.0
    keys = ("checkpoint_accuracy", "coverage", "continuous_coverage", "between_coverage", "step_accuracy",
            "false_alarms", "other_steps_right_or_flagged", "other_steps_before_right", "uncovered_flagged")
    fields = [f"{name}.{key}={r[key]:.3f}" for name, r in results.items() for key in keys if not np.isnan(r[key])]
    fields += [f"{goal}={'met' if ok else 'missed'}" for goal, ok in goals.items()]
    print("RESULT " + " ".join(fields))


if __name__ == "__main__":
    main()
