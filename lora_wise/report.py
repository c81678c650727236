"""The paper's experiments on a LoRA-WiSE build, written up as a Markdown report with figures.

The report opens with **the paper's findings on this build** (:mod:`lora_wise.findings`): each
finding, the paper's figure, this build's, and whether it holds, computed from the build.  Then,
for each config: both baselines under the chosen protocol (Table 2 style, beside the paper's
numbers), DSiRe's confusion matrix on the standard split (Fig. 4), the Frobenius norm against
dataset size (Fig. 2a), the accuracy of each layer alone (Fig. 3) and the accuracy against the
number of training micro-datasets (Fig. 5).  Figures come from ``lora_wise.figures``, the
same plots the leaderboard app shows.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .baselines import BASELINES, REFERENCE_BASELINES
from .configs import BenchmarkConfig, get_config
from .features import FeatureTable
from .findings import (Finding, dsire_beats_frobenius, flips_defend, near_paper, norm_falls, summary,
                       training_helps)
from .metrics.dataset_size_recovery.scores import compute_metrics, for_display
from .paper import paper_counterpart
from .protocol import METRICS, ProtocolResult, run_protocol

METHODS = REFERENCE_BASELINES
METHOD_NAMES = {name: cls.title for name, cls in BASELINES.items()}


@dataclass
class ConfigAnalysis:
    """Everything the report shows for one config."""

    config: BenchmarkConfig
    results: dict[str, ProtocolResult]
    confusion: dict  # {"labels": [...], "matrix": [[...]]}, DSiRe on the standard split
    layer_names: tuple[str, ...]
    layer_accuracy: np.ndarray  # (L,) accuracy (%) of each layer's classifiers voting alone
    train_sizes: list[int] = field(default_factory=list)
    train_size_accuracy: list[tuple[float, float]] = field(default_factory=list)  # (mean, std) per n
    model_norms: np.ndarray = field(default_factory=lambda: np.zeros(0))  # mean |BA|_F per model
    model_sizes: np.ndarray = field(default_factory=lambda: np.zeros(0))
    family_norms: dict[str, list[float]] = field(default_factory=dict)  # family -> mean |BA|_F per size
    step: int = 0
    #: DSiRe on the first snapshot's models, for Table 8's comparison (None: not measured).
    first: ProtocolResult | None = None
    first_step: int | None = None


def analyse(table: FeatureTable, config: str | BenchmarkConfig, protocol: str = "paper",
            methods: tuple[str, ...] = METHODS, first_table: FeatureTable | None = None) -> ConfigAnalysis:
    """Run the report's experiments on one config's feature table (its models at the checkpoint).

    ``first_table`` holds the same models at the config's first snapshot step: DSiRe runs on it too,
    for the finding that training longer helps (Table 8).
    """
    cfg = get_config(config) if isinstance(config, str) else config
    results = {m: run_protocol(table, cfg, m, protocol=protocol) for m in methods}
    first = run_protocol(first_table, cfg, "dsire", protocol=protocol) if first_table is not None else None
    standard = results[methods[0]].standard
    confusion = compute_metrics(standard.predictions, standard.references, confusion_matrix=True)["confusion_matrix"]

    # Fig. 3: each layer's classifiers (A, B, BA) vote alone on the standard split's test models
    from .baselines import DSiRe
    from .splits import standard_split

    split = standard_split(cfg)
    train, test = table.subset(table.rows_of(split.train)), table.subset(table.rows_of(split.test))
    model = DSiRe().fit(train)
    votes = model.classifier_votes(test)  # (N, layers x matrices), matrix-major
    n_layers = len(table.layer_names)
    per_layer = []
    for layer in range(n_layers):
        columns = votes[:, layer::n_layers]
        per_layer.append((model.pool(columns) == test.dataset_sizes).mean() * 100)

    # Fig. 5: accuracy against the number of training micro-datasets
    sizes = list(range(1, cfg.num_train_micro_datasets + 1))
    curve = []
    for n in sizes:
        result = run_protocol(table, cfg, "dsire", protocol=protocol, train_micro_datasets=n)
        curve.append((result.mean("accuracy"), result.std("accuracy")))
    families: dict[str, list[int]] = {}
    for i, name in enumerate(table.layer_names):
        families.setdefault(layer_family(name), []).append(i)
    family_norms = {family: [float(table.norms["BA"][table.dataset_sizes == s][:, index].mean())
                             for s in cfg.dataset_sizes] for family, index in families.items()}
    return ConfigAnalysis(config=cfg, results=results, confusion=confusion, layer_names=table.layer_names,
                          layer_accuracy=np.asarray(per_layer), train_sizes=sizes, train_size_accuracy=curve,
                          model_norms=table.norms["BA"].mean(axis=1), model_sizes=table.dataset_sizes,
                          family_norms=family_norms, step=int(table.steps[0]), first=first,
                          first_step=int(first_table.steps[0]) if first_table is not None else None)


def paper_findings(analyses: list[ConfigAnalysis]) -> list[Finding]:
    """Every finding of the paper that these analyses can test (:mod:`lora_wise.findings`).

    A config derived with the flip defense (``<config>-flip``) is compared with its base config
    when both are here; the other findings are tested on every config that is not such a defense.
    """
    by_name = {a.config.name: a for a in analyses}
    found: list[Finding] = []
    for analysis in analyses:
        cfg = analysis.config
        if cfg.base is not None and cfg.recipe.flip_augmentation:
            continue
        results = analysis.results
        found.append(norm_falls(cfg, analysis.model_norms, analysis.model_sizes))
        if "dsire" in results and "frobenius-nn" in results:
            found.append(dsire_beats_frobenius(cfg, results["dsire"], results["frobenius-nn"]))
        if "dsire" in results:
            near = near_paper(cfg, results["dsire"])
            if near is not None:
                found.append(near)
            if analysis.first is not None:
                found.append(training_helps(cfg, analysis.first, analysis.first_step, results["dsire"]))
        flipped = by_name.get(cfg.with_overrides(flip_augmentation=True).name)
        if flipped is not None and "dsire" in results and "dsire" in flipped.results:
            found.append(flips_defend(cfg, results["dsire"], flipped.config, flipped.results["dsire"]))
    return found


def findings_table(findings: list[Finding]) -> str:
    """The report's opening table: one row a finding."""
    lines = ["| finding | config | paper | this build | holds |", "| --- | --- | --- | --- | --- |"]
    for f in findings:
        lines.append(f"| {f.claim} ({f.source}) | `{f.config}` | {f.paper} | {f.ours} | "
                     f"{'yes' if f.holds else '**no**'} |")
    return "\n".join(lines)


def _cell(mean: float, std: float) -> str:
    return f"{mean:.2f} ± {std:.2f}"


def results_table(analyses: list[ConfigAnalysis]) -> str:
    """Table 2 of the paper, for this build: ours beside the paper's figure."""
    lines = ["| config | range | method | MAE ↓ | MAPE (%) ↓ | Acc (%) ↑ | paper MAE | paper MAPE | paper Acc | paper row |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for analysis in analyses:
        for method, result in analysis.results.items():
            paper, source = paper_counterpart(analysis.config, method)
            ours = [_cell(for_display(m, result.mean(m)), for_display(m, result.std(m))) for m in METRICS]
            theirs = ([_cell(for_display(m, getattr(paper, m)), for_display(m, getattr(paper, m + "_std")))
                       for m in METRICS] if paper else ["-"] * 3)
            lines.append(f"| `{analysis.config.name}` | {analysis.config.size_range} | "
                         f"{METHOD_NAMES.get(method, method)} | " + " | ".join(ours + theirs) + f" | {source} |")
    return "\n".join(lines)


def layer_family(name: str) -> str:
    """``up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k`` -> ``up attn2``."""
    parts = name.split(".")
    block = parts[0].split("_")[0] if parts[0] in ("down_blocks", "up_blocks", "mid_block") else parts[0]
    attention = next((p for p in parts if p.startswith("attn")), "")
    return f"{block} {attention}".strip()


def family_table(analysis: ConfigAnalysis) -> str:
    """Per layer family: mean |BA|_F per dataset size and the layers' accuracy alone."""
    sizes = analysis.config.dataset_sizes
    families: dict[str, list[int]] = {}
    for i, name in enumerate(analysis.layer_names):
        families.setdefault(layer_family(name), []).append(i)
    header = "| layer family | layers | " + " | ".join(f"n={s}" for s in sizes) + " | accuracy alone (%) |"
    lines = [header, "|" + " --- |" * (len(sizes) + 3)]
    return "\n".join(lines + [
        f"| {family} | {len(index)} | " + " | ".join(
            f"{analysis.family_norms[family][j]:.4f}" for j in range(len(sizes)))
        + f" | {analysis.layer_accuracy[index].mean():.1f} |"
        for family, index in families.items()])


def write_report(analyses: list[ConfigAnalysis], out: str | Path,
                 dataset: str, notes: list[str] | None = None) -> Path:
    """Write ``out/report.md`` and its PNG figures; return the report's path."""
    import matplotlib

    matplotlib.use("Agg")
    from . import figures

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sections = []
    for analysis in analyses:
        name = analysis.config.name
        images = {
            "confusion": figures.plot_confusion_matrix(
                analysis.confusion["labels"], analysis.confusion["matrix"],
                title=f"DSiRe confusion matrix, {name} (standard split)"),
            "norm": figures.plot_norm_vs_size(analysis.model_sizes, analysis.model_norms,
                                              title=f"Mean Frobenius norm of BA per model, {name}"),
            "layers": figures.plot_layer_accuracy(list(analysis.layer_names), analysis.layer_accuracy,
                                                  title=f"Accuracy of each layer alone (DSiRe), {name}"),
            "train": figures.plot_accuracy_vs_train_size(  # accuracy is a fraction: plotted in percent
                analysis.train_sizes, [for_display("accuracy", m) for m, _ in analysis.train_size_accuracy],
                [for_display("accuracy", s) for _, s in analysis.train_size_accuracy],
                title=f"DSiRe accuracy vs training micro-datasets, {name}"),
        }
        paths = {}
        for key, fig in images.items():
            path = out / f"{name}-{key}.png"
            fig.savefig(path, dpi=110, bbox_inches="tight")
            paths[key] = path.name
            import matplotlib.pyplot as plt

            plt.close(fig)
        protocol = next(iter(analysis.results.values())).protocol
        draws = len(next(iter(analysis.results.values())).draws)
        sections.append(f"""## `{name}`

{analysis.config.description} {analysis.config.num_models} models in the config; {len(analysis.model_sizes)}
read at step {analysis.step}; {protocol} protocol ({draws} draw{'s' if draws > 1 else ''}).

### Norm against dataset size (paper Fig. 2a)

![norm vs size]({paths['norm']})

Mean Frobenius norm of BA per layer family and dataset size, and the accuracy of the family's
layers voting alone on the standard split:

{family_table(analysis)}

### Confusion matrix (paper Fig. 4)

![confusion matrix]({paths['confusion']})

### Accuracy per layer (paper Fig. 3)

![accuracy per layer]({paths['layers']})

### Accuracy against the number of training micro-datasets (paper Fig. 5)

![accuracy vs training micro-datasets]({paths['train']})
""")
    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    findings = paper_findings(analyses)
    body = f"""# LoRA-WiSE report

Dataset: `{dataset}` · written {when} by `lora-wise`.

## The paper's findings on this build

{summary(findings)}, each computed from this build's models (`lora_wise.findings`; the thresholds
and what the miniature can and cannot show: `docs/miniature.md`).

{findings_table(findings)}

## Results (paper Table 2, on this build)

Mean ± standard deviation over the protocol's draws. For miniature configs the paper column shows
the paper's SD 1.5 rank-32 figure for the same size range: the experiment the miniature stands in
for, not the same models.

{results_table(analyses)}

{chr(10).join('- ' + n for n in notes or [])}

{chr(10).join(sections)}"""
    path = out / "report.md"
    path.write_text(body)
    return path
