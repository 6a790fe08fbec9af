#!/usr/bin/env python
"""Explore base vs PaKA-adapted dense features in the browser: a Gradio app on localhost.

PCA-to-RGB maps and k-means overlays of both models side by side; click a patch for its cosine-similarity
heat map in both models (and over a second image, best match boxed). Needs `pip install paka_hf[app]`.
Same as the `paka-explore` command.

Examples:
    python scripts/explore.py out/ --base facebook/dinov2-with-registers-small --images photos/
    python scripts/explore.py my-org/dinov2-paka          # base from the repository's training_config.yaml
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from paka_hf.cli import run_script  # noqa: E402
from paka_hf.explore import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_script(main))
