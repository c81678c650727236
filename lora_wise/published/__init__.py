"""The published LoRA-WiSE release (Hub dataset ``MoSalama98/LoRA-WiSE``), in and out.

* :func:`import_official` (``importer.py``) converts its subsets into this project's Hub
  layout, with the standard train/test split;
* :func:`export_official` (``exporter.py``) writes one of our configs in its layout;
* ``find.py`` finds its subsets in a folder or downloads them from the Hub;
* ``naming.py`` holds its names: repo, subsets, split, columns, micro-dataset names.

A stage on floor 2: it uses the library (``layout``, ``lora``, ``data``, ``hub``) and nothing
above it; ``lora-wise import-official`` / ``export-official`` (:mod:`lora_wise.cli.published`)
call it.
"""

from .exporter import ExportedSubset, export_official
from .find import download_published, published_subsets
from .importer import IMPORT_BATCH_ROWS, ImportedSubset, import_official
from .naming import (PUBLISHED_REPO, PUBLISHED_SPLIT, PUBLISHED_SUBSETS, micro_dataset_of, published_column,
                     published_name, published_subset)

__all__ = ["IMPORT_BATCH_ROWS", "PUBLISHED_REPO", "PUBLISHED_SPLIT", "PUBLISHED_SUBSETS", "ExportedSubset",
           "ImportedSubset", "download_published", "export_official", "import_official", "micro_dataset_of",
           "published_column", "published_name", "published_subset", "published_subsets"]
