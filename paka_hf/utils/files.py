"""The names of the files and folders paka_hf writes to (and reads from) an ``output_dir`` and its checkpoints.

Every module that writes or reads one of these names imports it from here, so a name is spelled once. The
``transformers`` names (model config, weights, image processor) are ``transformers``' own constants: an exported
folder is exactly what ``AutoModel.from_pretrained`` / ``AutoImageProcessor.from_pretrained`` read.

An exported ``output_dir``::

    config.json, model.safetensors, preprocessor_config.json   EXPORT_FILES (save_backbone)
    training_config.yaml, training_summary.json                the trainer, with the exported weights (export_backbone)
    skipped_images.jsonl                                       the trainer, as unreadable images are skipped
    adapter/adapter_config.json, adapter/adapter_model.safetensors   LoRA runs (ADAPTER_DIR, ADAPTER_FILES)
    pictures/*.png                                             paka-visualize (PICTURES_DIR)
    eval_results*.json                                         evaluation reports the model card picks up
    rank_diagnostics/rank{rank}.json                           record_rank_diagnostics
    checkpoint-N/paka_checkpoint_complete.json, paka_stream_rank{rank}.json   resumable checkpoints (each also
        holds its own training_config.yaml, training_summary.json and skipped_images.jsonl)
    README.md                                                  the model card, rendered at push time only

Example:
    >>> from paka_hf.utils.files import EXPORT_FILES, STREAM_STATE_FILE
    >>> EXPORT_FILES
    ('config.json', 'model.safetensors', 'preprocessor_config.json')
    >>> STREAM_STATE_FILE.format(rank=0)
    'paka_stream_rank0.json'
"""

from __future__ import annotations

from transformers.utils import CONFIG_NAME, IMAGE_PROCESSOR_NAME, SAFE_WEIGHTS_NAME, WEIGHTS_INDEX_NAME, WEIGHTS_NAME

# ---- the exported backbone (what AutoModel / AutoImageProcessor load) -------------------------------------------
#: The exported weights: a single safetensors file, whose sha256 identifies the model in evaluation reports.
WEIGHTS_FILE = SAFE_WEIGHTS_NAME
MODEL_CONFIG_FILE = CONFIG_NAME
PREPROCESSOR_FILE = IMAGE_PROCESSOR_NAME
#: What save_backbone writes and a push must carry.
EXPORT_FILES = (MODEL_CONFIG_FILE, WEIGHTS_FILE, PREPROCESSOR_FILE)
#: Pickle weights save_pretrained may leave behind; removed, since paka_hf publishes safetensors only.
PICKLE_WEIGHTS_FILES = (WEIGHTS_NAME, WEIGHTS_INDEX_NAME)

# ---- written by the trainer -----------------------------------------------------------------------------------
#: The run's PaKAConfig, written with the weights it describes: into each checkpoint before its marker, into
#: output_dir when the backbone is exported (end of training); the model card and the push read it.
TRAINING_CONFIG_FILE = "training_config.yaml"
#: Compute and data totals of the run so far, in output_dir and in each checkpoint.
TRAINING_SUMMARY_FILE = "training_summary.json"
#: The key of ``training_summary.json`` holding the collapse guard's measures of the student's patch features,
#: ``{"mean_patch_cosine": {"start", "end"}, "effective_rank": {"start", "end"}}`` (paka_hf.training.collapse_guard).
FEATURE_HEALTH_KEY = "feature_health"
#: Written last into a checkpoint-N folder: only a folder holding it is complete and resumable.
CHECKPOINT_MARKER = "paka_checkpoint_complete.json"
#: Each process's position in the image stream, in a checkpoint-N folder (``.format(rank=...)``).
STREAM_STATE_FILE = "paka_stream_rank{rank}.json"
#: In a checkpoint of a sharded (FSDP2) run, in place of model.safetensors and optimizer.pt: the model's and the
#: optimizer's shards, one file per process and a ``.metadata`` index each (``torch.distributed.checkpoint``).
MODEL_SHARDS_DIR = "model_shards"
OPTIMIZER_SHARDS_DIR = "optimizer_shards"
#: The images the data streams skipped, one JSON object a line (``image``, ``reason``, ``detail``), each image
#: once, over every process and every resume; process zero appends at each logging step and checkpoint save,
#: each checkpoint holds a copy, which a resume restores.
SKIPPED_IMAGES_FILE = "skipped_images.jsonl"
#: record_rank_diagnostics: output_dir/RANK_DIAGNOSTICS_DIR/RANK_DIAGNOSTICS_FILE.format(rank=...).
RANK_DIAGNOSTICS_DIR = "rank_diagnostics"
RANK_DIAGNOSTICS_FILE = "rank{rank}.json"

# ---- LoRA -----------------------------------------------------------------------------------------------------
#: The LoRA adapter, beside the merged model: ``PeftModel.from_pretrained(base, folder, subfolder=ADAPTER_DIR)``.
ADAPTER_DIR = "adapter"
ADAPTER_CONFIG_FILE = "adapter_config.json"  # peft's ADAPTER_CONFIG_NAME (peft is optional)
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"  # peft's SAFETENSORS_WEIGHTS_NAME
ADAPTER_FILES = (ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE)

# ---- the Hub repository ----------------------------------------------------------------------------------------
#: The model card; rendered at push time, a README.md of the user's own in output_dir is never read.
CARD_FILE = "README.md"
#: The PNGs of paka-visualize, shown in the model card.
PICTURES_DIR = "pictures"
#: Evaluation reports in output_dir that the model card includes when none are passed.
EVAL_RESULTS_GLOB = "eval_results*.json"

__all__ = [
    "ADAPTER_CONFIG_FILE",
    "ADAPTER_DIR",
    "ADAPTER_FILES",
    "ADAPTER_WEIGHTS_FILE",
    "CARD_FILE",
    "CHECKPOINT_MARKER",
    "EVAL_RESULTS_GLOB",
    "EXPORT_FILES",
    "FEATURE_HEALTH_KEY",
    "MODEL_CONFIG_FILE",
    "PICKLE_WEIGHTS_FILES",
    "PICTURES_DIR",
    "PREPROCESSOR_FILE",
    "RANK_DIAGNOSTICS_DIR",
    "RANK_DIAGNOSTICS_FILE",
    "SKIPPED_IMAGES_FILE",
    "STREAM_STATE_FILE",
    "TRAINING_CONFIG_FILE",
    "TRAINING_SUMMARY_FILE",
    "WEIGHTS_FILE",
]
