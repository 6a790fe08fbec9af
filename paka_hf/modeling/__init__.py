"""The model layer: the backbones PaKA post-trains, the training module that holds student and teacher, export.

- :mod:`~paka_hf.modeling.backbones`: the registry of supported ViT families and
  :class:`~paka_hf.modeling.backbones.PatchBackbone` (any family → its last-layer patch grid),
  :class:`~paka_hf.modeling.backbones.ProjectionHead`, the default image processor of each family;
- :mod:`~paka_hf.modeling.model`: :class:`~paka_hf.modeling.model.PaKAModel`, student, EMA teacher, alignment
  and loss in one module;
- :mod:`~paka_hf.modeling.teacher`: the EMA update and its momentum schedule;
- :mod:`~paka_hf.modeling.lora`: LoRA post-training (adapters on a frozen base, their EMA teacher, the merged
  export);
- :mod:`~paka_hf.modeling.export`: :func:`~paka_hf.modeling.export.save_backbone`, the plain ``transformers``
  folder that ``AutoModel.from_pretrained`` loads, and the weights' hash that results record.

Imports only :mod:`paka_hf.losses`, :mod:`paka_hf.views` and :mod:`paka_hf.utils`: the model runs (in a
benchmark, say) without ``Trainer``, the data stream or the Hub code.
"""
