"""``python -m lora_wise.cli``: the ``lora-wise`` command."""

import sys

from .main import main

sys.exit(main())
