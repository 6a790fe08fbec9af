"""Stand-ins for what a bare device machine may lack, for the benchmark scripts only (never for paka_hf).

``paka_hf.views.align`` needs ``torchvision.ops.roi_align``, and ``paka_hf.views.glim`` imports Pillow and torchvision's
transforms for view *rendering*. A benchmark that only builds the model and samples boxes can run without
them: :func:`install_stand_ins` puts plain-torch replacements into ``sys.modules`` where the real library
does not import. A script calls it explicitly, *before* it imports ``paka_hf`` and only when run as a script
(``if __name__ == "__main__"``), and reports what it replaced; importing a benchmark module (as the tests do)
changes nothing.
"""

from __future__ import annotations

import importlib.machinery
import sys
import types

import torch
from torch import nn


def roi_align_stand_in(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False):
    """``torchvision.ops.roi_align`` in plain torch (bilinear ``grid_sample`` + average pool), same numbers.

    Used only when torchvision does not import. Needs a fixed ``sampling_ratio`` (paka_hf uses 2).
    torchvision's rule: samples outside [-1, size] count 0, others are clamped into the grid (border).
    """
    if sampling_ratio <= 0:
        raise NotImplementedError("the roi_align stand-in needs a fixed sampling_ratio > 0")
    out_h, out_w = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    height, width = input.shape[-2:]
    boxes = boxes.float()
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (boxes[:, i] * spatial_scale - offset for i in range(1, 5))
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:
        roi_w, roi_h = roi_w.clamp_min(1.0), roi_h.clamp_min(1.0)
    ratio = sampling_ratio
    steps_x = (torch.arange(out_w * ratio, device=input.device, dtype=torch.float32) + 0.5) / ratio  # in bins
    steps_y = (torch.arange(out_h * ratio, device=input.device, dtype=torch.float32) + 0.5) / ratio
    xs = x1[:, None] + steps_x[None] * (roi_w / out_w)[:, None]  # (K, out_w · ratio) grid coordinates
    ys = y1[:, None] + steps_y[None] * (roi_h / out_h)[:, None]
    inside = ((ys >= -1) & (ys <= height))[:, :, None] & ((xs >= -1) & (xs <= width))[:, None, :]
    gx = 2 * xs / (width - 1) - 1 if width > 1 else torch.zeros_like(xs)
    gy = 2 * ys / (height - 1) - 1 if height > 1 else torch.zeros_like(ys)
    grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)
    crops = input.float()[boxes[:, 0].long()]
    sampled = nn.functional.grid_sample(crops, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return nn.functional.avg_pool2d(sampled * inside[:, None], ratio).to(input.dtype)


def _stub(name: str, **attributes) -> types.ModuleType:
    """A module ``name`` in ``sys.modules`` with ``attributes``; any other public attribute is a function that
    raises when called (a module may name one at import, e.g. a table of torchvision functions, and never call it)."""
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, loader=None, is_package=True)
    module.__path__ = []

    def missing(attribute: str):
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        message = (
            f"{name}.{attribute}: {name.split('.')[0]} is not installed here; benchmarks/_stand_ins.py put a stand-in "
            "in its place that only lets paka_hf's model modules import"
        )

        def unavailable(*args, **kwargs):
            raise NotImplementedError(message)

        unavailable.__name__ = unavailable.__qualname__ = attribute
        return unavailable

    module.__getattr__ = missing
    for key, value in attributes.items():
        setattr(module, key, value)
    sys.modules[name] = module
    return module


def install_stand_ins() -> list[str]:
    """Make the model modules importable on a machine without torchvision or Pillow.

    ``paka_hf.views.align`` needs ``torchvision.ops.roi_align`` (replaced by :func:`roi_align_stand_in`);
    ``paka_hf.views.glim`` imports Pillow and torchvision's transforms for view *rendering*, which this
    these scripts never do (they only call ``sample_boxes``). Returns the names replaced (normally none).
    """
    replaced = []
    try:
        from torchvision.ops import roi_align
        from torchvision.transforms.v2 import functional

        roi_align(torch.zeros(1, 1, 2, 2), torch.tensor([[0.0, 0.0, 0.0, 1.0, 1.0]]), 1, sampling_ratio=1)
    except Exception:  # noqa: BLE001  (absent, or built for another torch: its C++ ops fail to register)
        for key in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
            del sys.modules[key]
        functional = _stub("torchvision.transforms.v2.functional")
        v2 = _stub("torchvision.transforms.v2", functional=functional)
        transforms = _stub("torchvision.transforms", v2=v2)
        ops = _stub("torchvision.ops", roi_align=roi_align_stand_in)
        _stub("torchvision", ops=ops, transforms=transforms)
        replaced.append("torchvision")
    try:
        from PIL import Image, ImageOps  # noqa: F401
    except Exception:  # noqa: BLE001  (absent, or a broken build: either way the stand-in)
        for key in [k for k in sys.modules if k == "PIL" or k.startswith("PIL.")]:
            del sys.modules[key]
        _stub("PIL", Image=_stub("PIL.Image"), ImageOps=_stub("PIL.ImageOps"))
        replaced.append("PIL")
    return replaced
