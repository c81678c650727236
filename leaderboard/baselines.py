"""Put the two reference baselines on the leaderboard.

For each config, DSiRe and Frobenius-NN are fitted on the train micro-datasets of
the standard split and predict its test models (``lora_wise.protocol.run_protocol``,
standard protocol); their predictions go through ``submit`` like anyone's, marked as
reference entries.  Adding them again with identical predictions is a no-op, so the
command can run after every rebuild.
"""

from __future__ import annotations

import os

from .entries import predictions_sha256
from .references import available_configs, default_dataset, load_references, resolve_config
from .store import Store, open_store
from .submission import ParsedSubmission, SubmissionError
from .scoring import SubmitResult, submit

#: Baseline name in ``lora_wise.baselines`` -> method name on the leaderboard.
REFERENCE_METHODS = {"dsire": "DSiRe (reference)", "frobenius-nn": "Frobenius-NN (reference)"}
REFERENCE_AUTHORS = "Salama, Kahana, Horwitz, Hoshen (2024)"
REFERENCE_LINK = "https://arxiv.org/abs/2406.19395"


def add_baselines(dataset: str | os.PathLike | None = None, configs: list[str] | None = None,
                  store: Store | None = None, progress: bool = False,
                  results: dict | None = None) -> list[SubmitResult]:
    """Score DSiRe and Frobenius-NN on the test split of each config and store them.

    ``configs`` defaults to every config the dataset holds.  ``results`` may hold protocol
    results already computed (``{config: {"dsire": ProtocolResult, ...}}``, e.g. by the
    report): their standard draw is submitted instead of fitting again.  Returns the entries
    added (an identical reference entry already stored is not added twice).
    """
    from lora_wise.data import feature_table
    from lora_wise.protocol import run_protocol

    where = str(dataset) if dataset else default_dataset()
    store = store if store is not None else open_store()
    names = [resolve_config(c) for c in configs] if configs else available_configs(where)
    if not names:
        raise SubmissionError(f"the dataset {where!r} holds no configs to run the baselines on; build one "
                              f"with `lora-wise build --config mini_low_r8 --out {where}`")
    added = []
    for config in names:
        references = load_references(where, config, "test")
        known = (results or {}).get(config, {})
        table = None
        existing = {(e.method, e.sha256) for e in store.entries(config, "test") if e.reference}
        for baseline, method in REFERENCE_METHODS.items():
            if baseline in known:
                draw = known[baseline].standard
            else:
                table = table if table is not None else feature_table(where, config, progress=progress)
                draw = run_protocol(table, config, baseline, protocol="standard").standard
            predictions = dict(zip(draw.model_ids, (float(p) for p in draw.predictions)))
            if (method, predictions_sha256(predictions)) in existing:
                continue
            added.append(submit(ParsedSubmission(predictions=predictions), method=method, config=config,
                                split="test", authors=REFERENCE_AUTHORS, link=REFERENCE_LINK, store=store,
                                reference=True, references=references))
    return added
