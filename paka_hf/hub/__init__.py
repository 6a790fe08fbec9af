"""Hub publishing: export the backbone, render the model card, push everything in one commit.

The end product of PaKA is a plain ``transformers`` model on the Hub that anyone loads with
``AutoModel.from_pretrained("org/dinov2-paka")``. One module per job:

- :mod:`~paka_hf.hub.results`: which evaluation results belong to which model;
- :mod:`~paka_hf.hub.card`: :func:`render_model_card` (the packaged template
  ``paka_hf/hub/templates/paka_model_card.md``, results table, metadata);
- :mod:`~paka_hf.hub.push`: :func:`push_to_hub` (one commit that makes the remote exactly the export,
  visibility checks, retries, errors).

The export folder itself is written by :func:`save_backbone`, defined in :mod:`paka_hf.modeling.export` (the
model layer, which the trainer and the evaluation also use) and re-exported here with
:func:`weights_sha256` and :func:`default_image_processor`, so that a user publishes from one import. Pushes
during training live with the trainer (:mod:`paka_hf.training.hub_push`).

Example::

    >>> from paka_hf.hub import save_backbone, push_to_hub
    >>> save_backbone(backbone, "out/")
    >>> push_to_hub("out/", "org/dinov2-paka", eval_results=["base.json", "paka.json"])
"""

from paka_hf.hub.card import (
    CITATION,
    DEFAULT_TAGS,
    PAPER_URL,
    TEMPLATE_PATH,
    Picture,
    find_pictures,
    read_training_config,
    redact_secrets,
    render_model_card,
    results_table,
)
from paka_hf.hub.push import (
    DEFAULT_COMMIT_MESSAGE,
    HubAuthenticationError,
    HubVisibilityError,
    UnsafeUploadError,
    collect_upload_files,
    push_to_hub,
    resolve_endpoint,
)
from paka_hf.hub.results import EvalResultsError, MislabelledResultsError, attribute_eval_results, load_eval_results
from paka_hf.modeling.backbones import default_image_processor
from paka_hf.modeling.export import save_backbone, weights_sha256
from paka_hf.utils.files import (
    ADAPTER_DIR,
    ADAPTER_FILES,
    CARD_FILE,
    EXPORT_FILES,
    PICTURES_DIR,
    TRAINING_CONFIG_FILE,
    TRAINING_SUMMARY_FILE,
    WEIGHTS_FILE,
)

__all__ = [
    "ADAPTER_DIR",
    "ADAPTER_FILES",
    "CARD_FILE",
    "CITATION",
    "DEFAULT_COMMIT_MESSAGE",
    "DEFAULT_TAGS",
    "EXPORT_FILES",
    "EvalResultsError",
    "HubAuthenticationError",
    "HubVisibilityError",
    "MislabelledResultsError",
    "PAPER_URL",
    "PICTURES_DIR",
    "Picture",
    "TEMPLATE_PATH",
    "TRAINING_CONFIG_FILE",
    "TRAINING_SUMMARY_FILE",
    "UnsafeUploadError",
    "WEIGHTS_FILE",
    "attribute_eval_results",
    "collect_upload_files",
    "default_image_processor",
    "find_pictures",
    "load_eval_results",
    "push_to_hub",
    "read_training_config",
    "redact_secrets",
    "render_model_card",
    "resolve_endpoint",
    "results_table",
    "save_backbone",
    "weights_sha256",
]
