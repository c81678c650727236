"""Put the two reference baselines on the leaderboard.

For each config, DSiRe and Frobenius-NN run under the paper protocol
(``lora_wise.protocol.run_protocol``: fitted on the train micro-datasets of each of the 10
draws, predicting its test models; the first draw is the standard split); every draw's
predictions go through ``submit`` like a results record, marked as reference entries, so the
board shows their standard-split score and their 10-draw mean ± std.  Adding them again
with identical predictions is a no-op, so the command can run after every rebuild.

``seed_baselines`` is what a fresh Space runs when it starts (``$LORA_WISE_SEED_BASELINES=1``,
set by ``lora-wise leaderboard deploy``): it adds them for each config of the dataset that
has no reference entry yet, and logs -- never raises -- what fails.
"""

from __future__ import annotations

import logging
import os

from lora_wise.baselines import BASELINES, REFERENCE_BASELINES

from .entries import duplicate_key, predictions_sha256
from .references import available_configs, default_dataset, resolve_config
from .store import Store, open_store, ranked_entries
from .submission import SubmissionError, parse_record
from .scoring import SubmitResult, submit

#: Baseline name in ``lora_wise.baselines`` -> method name on the leaderboard.
REFERENCE_METHODS = {name: f"{BASELINES[name].title} (reference)" for name in REFERENCE_BASELINES}
REFERENCE_AUTHORS = "Salama, Kahana, Horwitz, Hoshen (2024)"
REFERENCE_LINK = "https://arxiv.org/abs/2406.19395"
#: ``1``: the app adds the reference baselines of configs that have none when it starts.
SEED_ENV = "LORA_WISE_SEED_BASELINES"

log = logging.getLogger(__name__)


def add_baselines(dataset: str | os.PathLike | None = None, configs: list[str] | None = None,
                  store: Store | None = None, progress: bool = False,
                  results: dict | None = None, protocol: str = "paper") -> list[SubmitResult]:
    """Score DSiRe and Frobenius-NN under ``protocol`` on each config and store them.

    ``configs`` defaults to every config the dataset holds.  ``results`` may hold protocol
    results already computed (``{config: {"dsire": ProtocolResult, ...}}``, e.g. by the
    report): they are submitted instead of fitting again.  Returns the entries added (a
    reference entry with the same predictions as one already ranked -- its own earlier run, or the
    other baseline's where both predict alike -- is not added again).
    """
    from lora_wise.data import dataset_configs, feature_table
    from lora_wise.evaluation import to_record
    from lora_wise.protocol import run_protocol

    where = str(dataset) if dataset else default_dataset()
    store = store if store is not None else open_store()
    names = [resolve_config(c) for c in configs] if configs else dataset_configs(where)
    if not names:
        raise SubmissionError(f"the dataset {where!r} holds no configs to run the baselines on; build one "
                              f"with `lora-wise build --config mini_low_r8 --out {where}`")
    added = []
    for config in names:
        known = (results or {}).get(config, {})
        table = None
        ranked = ranked_entries(store, config, "test")
        existing = {(e.method, e.sha256) for e in ranked if e.reference}
        keys = {e.duplicate_key() for e in ranked}
        for baseline, method in REFERENCE_METHODS.items():
            if baseline in known:
                result = known[baseline]
            else:
                table = table if table is not None else feature_table(where, config, progress=progress)
                result = run_protocol(table, config, baseline, protocol=protocol)
            parsed = parse_record(to_record(result, where, name=method), f"the {baseline} run on {config}")
            predictions = [d.predictions for d in parsed.draws]
            key = duplicate_key(config, "test", predictions)
            if (method, predictions_sha256(predictions[0])) in existing or key in keys:
                continue  # already ranked -- or the other baseline predicted exactly the same (a tiny config)
            keys.add(key)
            added.append(submit(parsed, method=method, config=config, split="test", authors=REFERENCE_AUTHORS,
                                link=REFERENCE_LINK, store=store, reference=True, dataset=where))
    return added


def seeding_requested() -> bool:
    """Whether ``$LORA_WISE_SEED_BASELINES`` is ``1`` (a deployed Space sets it)."""
    return os.environ.get(SEED_ENV, "").strip() == "1"


def seed_baselines(dataset: str | os.PathLike | None = None, store: Store | None = None) -> list[SubmitResult]:
    """Add the reference baselines of every config of ``dataset`` with no reference entry in ``store``.

    Meant for an app starting on an empty results store: each config is tried on its own, and
    a failure (the dataset unreachable, a store that cannot be written) is logged as a warning
    and skipped, never raised.  Returns the entries added.
    """
    where = str(dataset) if dataset else default_dataset()
    added: list[SubmitResult] = []
    try:
        store = store if store is not None else open_store()
        configs = available_configs(where)
        if not configs:
            log.warning("seeding the reference baselines: no configs found in the dataset %r", where)
        missing = [c for c in configs if not any(e.reference for e in store.entries(c, "test"))]
    except Exception as exc:  # noqa: BLE001 - the app must start anyway
        log.warning("seeding the reference baselines: cannot read the dataset %r or the store (%s: %s)",
                    where, type(exc).__name__, exc)
        return added
    for config in missing:
        try:
            found = add_baselines(where, configs=[config], store=store)
        except Exception as exc:  # noqa: BLE001
            log.warning("seeding the reference baselines of %s from %r failed (%s: %s); run `lora-wise "
                        "leaderboard add-baselines` by hand", config, where, type(exc).__name__, exc)
            continue
        log.info("seeded %d reference entries of %s from %r", len(found), config, where)
        added += found
    return added
