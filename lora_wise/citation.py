"""How to cite LoRA-WiSE: the paper that introduced the task and the benchmark.

One copy of the BibTeX, for everything that shows it (the leaderboard's About tab; README.md and
CITATION.cff hold the same, checked by the tests).
"""

from __future__ import annotations

ARXIV_ID = "2406.19395"
PAPER_URL = f"https://arxiv.org/abs/{ARXIV_ID}"
PAPER_TITLE = "Dataset Size Recovery from LoRA Weights"
PAPER_AUTHORS = "Mohammad Salama, Jonathan Kahana, Eliahu Horwitz, Yedid Hoshen"

BIBTEX = f"""\
@article{{salama2024dataset,
  title   = {{{PAPER_TITLE}}},
  author  = {{Salama, Mohammad and Kahana, Jonathan and Horwitz, Eliahu and Hoshen, Yedid}},
  journal = {{arXiv preprint arXiv:{ARXIV_ID}}},
  year    = {{2024}}
}}"""
