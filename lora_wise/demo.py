"""``lora-wise demo``: the whole story on a CPU, in one command.

1. **build** every miniature config with the builder, and the medium one again with the
   paper's flip-augmentation defense (the miniature backbone is pre-trained and cached on
   first use; finished models are kept across runs);
2. **run the paper's experiments**: DSiRe and Frobenius-NN under the paper's
   10-draw protocol, scored with the metric, DSiRe at the first snapshot too, the figures'
   analyses and the paper's findings (``lora_wise.findings``);
3. **fill the leaderboard**: both baselines' standard-split predictions are
   submitted to the local leaderboard as reference entries;
4. **write the report** (Markdown with figures) and say where it is and how to
   open the leaderboard.

This module only orchestrates: every step is a library call of its stage.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

DEFAULT_REPORT = "lora-wise-report"


@dataclass
class DemoResult:
    dataset: Path
    report: Path
    configs: list[str]
    timings: dict[str, float] = field(default_factory=dict)
    db: str | None = None


def demo_configs() -> list[str]:
    """What the demo builds: every miniature config, and the flip defense of those of the range the
    paper defended (Table 6: the medium range)."""
    from .configs import MINIATURE_CONFIGS, get_config
    from .findings import FLIP_RANGES

    names = list(MINIATURE_CONFIGS)
    return names + [get_config(n).with_overrides(flip_augmentation=True).name for n in names
                    if get_config(n).data_range in FLIP_RANGES]


def run_demo(out: str = "lora-wise", report_dir: str = DEFAULT_REPORT, configs: Sequence[str] | None = None,
             protocol: str = "paper", db: str | None = None, micro_datasets: int | None = None,
             build_options: dict | None = None, progress: bool = True,
             echo: Callable[[str], None] = print) -> DemoResult:
    """Build, evaluate, register and report; returns where everything went."""
    from lora_wise.builder.build import BuildOptions, build
    from lora_wise.leaderboard.baselines import add_baselines
    from lora_wise.leaderboard.entries import format_board
    from lora_wise.leaderboard.store import default_db_path, open_store

    from .configs import get_config
    from .data import feature_table
    from .findings import summary as findings_summary
    from .report import analyse, paper_findings, write_report

    names = list(configs or demo_configs())
    timings: dict[str, float] = {}
    started = time.perf_counter()

    echo(f"[1/4] Building {', '.join(names)} into {out}/ (DreamBooth-LoRA, diffusers + PEFT, on the "
         f"miniature SD backbone)")
    summary = build(names, BuildOptions(out=out, micro_datasets=micro_datasets, progress=progress,
                                        **(build_options or {})))
    echo("      " + summary.format())
    timings["build"] = time.perf_counter() - started

    echo(f"[2/4] Running DSiRe and Frobenius-NN under the {protocol} protocol")
    analyses = []
    step_start = time.perf_counter()
    for name in summary.configs:
        cfg = get_config(name)
        table = feature_table(out, name, progress=progress)
        first = None
        if not cfg.recipe.flip_augmentation and len(cfg.snapshot_steps) > 1:
            first = feature_table(out, name, step=cfg.snapshot_steps[0], progress=progress)
        analysis = analyse(table, name, protocol=protocol, first_table=first)
        analyses.append(analysis)
        for result in analysis.results.values():
            echo(_indent(result.format()))
    findings = paper_findings(analyses)
    echo(f"      The paper's findings on this build: {findings_summary(findings)}")
    for finding in findings:
        echo(f"      {'holds' if finding.holds else 'FAILS'}  {finding.source:8s} `{finding.config}`: {finding.ours}")
    timings["experiments"] = time.perf_counter() - step_start

    echo("[3/4] Registering both baselines on the local leaderboard")
    step_start = time.perf_counter()
    store = open_store(db if db is not None else default_db_path())  # local, even where a Hub results repo is set
    add_baselines(out, summary.configs, store=store,
                  results={a.config.name: a.results for a in analyses})
    for name in summary.configs:
        echo(_indent(format_board(store.entries(name, "test"), title=f"{name} (test split)")))
    timings["leaderboard"] = time.perf_counter() - step_start

    echo("[4/4] Writing the report")
    timings["total"] = time.perf_counter() - started
    notes = [summary.format(),
             "wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())]
    report = write_report(analyses, report_dir, dataset=out, notes=notes)
    db_flag = f" --db {db}" if db else ""
    echo(f"\nReport:      {report.resolve()}  (Markdown with figures; open it in any Markdown viewer)\n"
         f"Leaderboard: lora-wise leaderboard serve --dataset {out}{db_flag}   then open http://127.0.0.1:7860\n"
         f"             lora-wise leaderboard show{db_flag}                  prints it here\n"
         f"Done in {timings['total'] / 60:.1f} min.")
    return DemoResult(dataset=Path(out), report=report, configs=summary.configs, timings=timings, db=db)


def _indent(text: str) -> str:
    return "\n".join("      " + line for line in text.splitlines())
