"""The training layer: PaKA's post-training as a ``transformers.Trainer`` run.

- :mod:`~paka_hf.training.config`: :class:`~paka_hf.training.config.PaKAConfig`, ``TrainingArguments`` plus
  the method's settings, each checked at start-up;
- :mod:`~paka_hf.training.data`: image sources (Hub, folder, parquet, webdataset) and the resumable view
  stream and collator;
- :mod:`~paka_hf.training.trainer`: :class:`~paka_hf.training.trainer.PaKATrainer` (EMA and weight-decay
  callbacks, logs, checkpoints, export);
- :mod:`~paka_hf.training.checkpoints`: checkpoint folders, their completion markers, resume and rotation;
- :mod:`~paka_hf.training.optimization`: the AdamW parameter groups and the weight decay's schedule;
- :mod:`~paka_hf.training.hub_push`: pushes to the Hub during training, through ``Trainer``'s hooks.

May import every layer below it (:mod:`paka_hf.hub`, :mod:`paka_hf.evaluation`, :mod:`paka_hf.modeling`,
:mod:`paka_hf.losses`, :mod:`paka_hf.views`, :mod:`paka_hf.utils`); never :mod:`paka_hf.apps` or
:mod:`paka_hf.commands`.
"""
