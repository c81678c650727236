"""The one definition of a LoRA-WiSE row: one row is one LoRA snapshot.

The builder writes rows with this schema, the importer of the published release
converts into it, and every reader relies on it.  A Parquet shard of any config
has exactly these columns, in this order, in both views of a config
(``lora_wise.layout``): ``<config>``, one row per model (its snapshot at the
config's checkpoint step), and ``<config>_snapshots``, every snapshot.
"""

from __future__ import annotations

import pyarrow as pa

#: Column name -> (Arrow type, meaning).  The order is the order of the columns.
COLUMNS: dict[str, tuple[pa.DataType, str]] = {
    "model_id": (pa.string(), "Identity of the fine-tuned model: `<config>/<micro_dataset>/n<size>`; "
                              "unique in a config, shared by a model's snapshots."),
    "config": (pa.string(), "Benchmark config name (see `lora-wise configs`)."),
    "micro_dataset": (pa.string(), "Name of the micro-dataset (concept or class) the images came from."),
    "micro_dataset_index": (pa.int32(), "Position of the micro-dataset in the config's list; "
                                        "the standard splits draw these indices."),
    "dataset_size": (pa.int32(), "Number of images the model was fine-tuned on: the label."),
    "rank": (pa.int32(), "LoRA rank r."),
    "backbone": (pa.string(), "Short name of the pre-trained backbone (sd1.5, sd2, mini-sd)."),
    "step": (pa.int32(), "Training step of this snapshot."),
    "seed": (pa.int64(), "Seed of the fine-tuning run (noise, timesteps, image order)."),
    "image_ids": (pa.list_(pa.string()), "Ids of the images drawn from the micro-dataset."),
    "recipe": (pa.string(), "Fine-tuning recipe as JSON (lr, schedule, batch size, steps, ...)."),
    "lora": (pa.binary(), "The LoRA weights as a safetensors file (PEFT naming, diffusers-loadable)."),
}

SCHEMA = pa.schema([pa.field(name, dtype) for name, (dtype, _) in COLUMNS.items()])

#: Columns cheap enough to read for every row (everything but the weights).
LABEL_COLUMNS: tuple[str, ...] = tuple(name for name in COLUMNS if name != "lora")

SPLITS: tuple[str, ...] = ("train", "test")


def model_id(config: str, micro_dataset: str, dataset_size: int) -> str:
    """The model id of one fine-tuned model."""
    return f"{config}/{micro_dataset}/n{dataset_size}"
