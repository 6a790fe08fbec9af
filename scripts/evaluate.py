#!/usr/bin/env python
"""Dense evaluation (linear probe, overclustering, Hummingbird): ``python scripts/evaluate.py --model_name_or_path ...``.

The program is :mod:`paka_hf.commands.evaluate` (also installed as ``paka-evaluate``); ``--help`` lists its options.
"""

import sys

from paka_hf.commands.cli import run_script
from paka_hf.commands.evaluate import main

if __name__ == "__main__":
    sys.exit(run_script(main))
