"""All of the project's metadata lives in setup.cfg; this file only quiets one setuptools notice.

builder/ and leaderboard/ install as lora_wise.builder and lora_wise.leaderboard (``package_dir``
in setup.cfg), so an editable install (``pip install -e .``) goes through setuptools' meta path
finder, which ends with an "Editable installation" notice (``InformationOnly``, which pip shows
as a warning): folders of the working directory named like a package may win over it.  The
hazard it means -- code importing a top-level ``builder`` or ``leaderboard`` that only a checkout
provides -- is refused by tests/test_architecture.py.  Every other warning is left as it is.
"""

import warnings

from setuptools import setup
from setuptools.warnings import InformationOnly

warnings.filterwarnings("ignore", message="Editable installation", category=InformationOnly)

setup()
