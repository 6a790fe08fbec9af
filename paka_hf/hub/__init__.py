"""Hub publishing: export the backbone, render the model card, push everything in one commit.

The end product of PaKA is a plain ``transformers`` model on the Hub that anyone loads with
``AutoModel.from_pretrained("org/dinov2-paka")``. One module per job:

- :mod:`~paka_hf.hub.export`: :func:`save_backbone` writes the export folder (``config.json``,
  ``model.safetensors``, ``preprocessor_config.json``);
- :mod:`~paka_hf.hub.results`: which evaluation results belong to which model;
- :mod:`~paka_hf.hub.card`: :func:`render_model_card` (template, results table, metadata);
- :mod:`~paka_hf.hub.push`: :func:`push_to_hub` (one commit, retries, errors).

Pushes during training live with the trainer (:mod:`paka_hf.trainer_hub`).

Example::

    >>> from paka_hf.hub import save_backbone, push_to_hub
    >>> save_backbone(backbone, "out/")
    >>> push_to_hub("out/", "org/dinov2-paka", eval_results=["base.json", "paka.json"])
"""

from .card import (
    CITATION, DEFAULT_TAGS, PAPER_URL, TEMPLATE_PATH, Picture, find_pictures, read_training_config, redact_secrets,
    render_model_card, results_table, write_model_card,
)
from .export import (
    CARD_FILE, EXPORT_FILES, PICTURES_DIR, TRAINING_CONFIG_FILE, TRAINING_SUMMARY_FILE, default_image_processor,
    save_backbone,
)
from .push import DEFAULT_COMMIT_MESSAGE, HubAuthenticationError, collect_upload_files, push_to_hub, resolve_endpoint
from .results import load_eval_results, split_eval_results
