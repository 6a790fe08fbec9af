#!/usr/bin/env python
"""Explore base vs PaKA-adapted dense features in the browser: a Gradio app on localhost.

PCA-to-RGB maps and k-means overlays of both models side by side; click a patch for its cosine-similarity
heat map in both models (and over a second image, best match boxed). Needs `pip install paka_hf[app]`.
Same as the `paka-explore` command.

Examples:
    python scripts/explore.py out/ --base facebook/dinov2-with-registers-small --images photos/
    python scripts/explore.py my-org/dinov2-paka          # base from the repository's training_config.yaml
"""

import sys

from paka_hf.commands.cli import run_script
from paka_hf.commands.explore import main

if __name__ == "__main__":
    sys.exit(run_script(main))
