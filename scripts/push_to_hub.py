#!/usr/bin/env python
"""Publish a PaKA training output folder to the Hugging Face Hub in one commit: ``python scripts/push_to_hub.py OUTPUT_DIR ...``.

The program is :mod:`paka_hf.commands.push` (also installed as ``paka-push``); ``--help`` lists its options.
"""

import sys

from paka_hf.commands.cli import run_script
from paka_hf.commands.push import main

if __name__ == "__main__":
    sys.exit(run_script(main))
