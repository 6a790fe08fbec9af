#!/usr/bin/env python
"""PaKA post-training: ``accelerate launch scripts/train.py --config X.yaml [--field value ...]``.

The program is :mod:`paka_hf.commands.train` (also installed as ``paka-train``); ``--help`` lists every field.
"""

import sys

from paka_hf.commands.cli import run_script
from paka_hf.commands.train import main

if __name__ == "__main__":
    sys.exit(run_script(main))
