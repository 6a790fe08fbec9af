#!/usr/bin/env python
"""The model card's pictures: base vs PaKA-adapted dense features on a few images: ``python scripts/visualize.py OUTPUT_DIR ...``.

The program is :mod:`paka_hf.commands.visualize` (also installed as ``paka-visualize``); ``--help`` lists its options.
"""

import sys

from paka_hf.commands.cli import run_script
from paka_hf.commands.visualize import main

if __name__ == "__main__":
    sys.exit(run_script(main))
