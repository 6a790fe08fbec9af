"""The views layer: how PaKA cuts an image into paired global and local views, and how their patch grids align.

- :mod:`~paka_hf.views.geometry`: :class:`~paka_hf.views.geometry.ViewGeometry`, where each view was cut, which
  views pair, which were flipped;
- :mod:`~paka_hf.views.glim`: GLIM box sampling (local crops that overlap a global view by at least
  ``min_intersection``), :class:`~paka_hf.views.glim.GlimTransform`, collation and device rendering;
- :mod:`~paka_hf.views.augment` and :mod:`~paka_hf.views.photometric`: DINO's photometric augmentation of the
  student's views, per view (torchvision) or per batch;
- :mod:`~paka_hf.views.resample`: Pillow's bicubic crop-and-resize as batched matrix products;
- :mod:`~paka_hf.views.align`: RoIAlign of both patch grids over each pair's intersection.

A sibling of :mod:`paka_hf.losses`: it imports only :mod:`paka_hf.utils` (and torch, torchvision, Pillow), so
the data workers and the model use it without the trainer.
"""
