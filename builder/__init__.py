"""The LoRA-WiSE builder: fine-tune DreamBooth-LoRA snapshots for real and write them as a Hub dataset.

The pipeline, one module per step::

    configs (lora_wise.configs)           which models: sizes, source, backbone, rank, recipe, snapshots
      -> micro_datasets.py                images per concept (folders, `datasets`, synthetic_images.py);
                                          n drawn per size; checked before any training
      -> plan.py                          units = (config, micro-dataset, size), each a training job
      -> backbones.py                     StableDiffusionPipeline.from_pretrained (SD 1.5, SD 2, or the
                                          miniature pipeline pre-trained once and cached)
      -> train.py                         DreamBooth-LoRA with PEFT, per-model RNG protocol, snapshots
                                          saved as diffusers LoRA safetensors
      -> batched.py                       K models of one config in one forward/backward (stacked LoRA
                                          factors, per-model AdamW, clipping, RNG); equal to train.py
      -> distributed.py                   groups of units on worker processes, `--shard i/N`, or Ray
      -> write.py                         rows -> atomic unit commits -> sealed Parquet shards + card
      -> push.py                          huggingface_hub upload of the folder

``build.py`` runs the steps; ``lora-wise build`` and ``lora-wise push`` (``lora_wise/cli/``)
call ``build.build`` and ``push.push``.  Installed as ``lora_wise.builder``, a stage above the
library that never imports the leaderboard or the commands.  The same code builds the paper's benchmark
on GPUs with SD 1.5 / SD 2 and the miniature benchmark on a CPU: the
miniature backbone is just another ``from_pretrained`` folder.

Importing this package is light; torch, diffusers and PEFT load when training starts.
"""
