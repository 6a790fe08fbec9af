"""ViewGeometry: the one type for the boxes, pairing and flips that travel from the views to the model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from paka_hf.views.geometry import GEOMETRY_KEYS, ViewGeometry
from paka_hf.views.glim import VIEW_KEYS, GlimTransform, collate_views


def test_a_sample_and_a_batch_carry_the_geometry_fields_and_read_back_the_same():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8))
    transform = GlimTransform(56, 28, n_local=3, flip=True)
    samples = [transform(image, torch.Generator().manual_seed(i)) for i in range(2)]
    one = ViewGeometry.from_batch(samples[0])
    assert one.global_boxes.shape == (2, 4) and one.local_boxes.shape == (3, 4)
    assert one.pair_index.tolist() == [0, 1, 0] and one.local_flips.shape == (3,)
    batch = collate_views(samples)
    assert set(VIEW_KEYS) == {"global_views", "local_views", *GEOMETRY_KEYS}
    geometry = ViewGeometry.from_batch(batch)
    assert geometry.global_boxes.shape == (2, 2, 4) and geometry.pair_index.shape == (2, 3)
    assert geometry.global_flips.dtype == torch.bool
    assert all(torch.equal(value, batch[key]) for key, value in geometry.as_dict().items())
    assert all(torch.equal(x, y) for x, y in zip(ViewGeometry.from_batch(samples[1]), (f[1] for f in geometry)))


def test_flips_are_optional_and_boxes_are_not():
    boxes = {
        "global_boxes": torch.zeros(1, 2, 4),
        "local_boxes": torch.zeros(1, 4, 4),
        "pair_index": torch.zeros(1, 4),
    }
    geometry = ViewGeometry.from_batch(boxes)
    assert geometry.global_flips is None and geometry.local_flips is None
    assert geometry.as_dict().keys() == boxes.keys()
    with pytest.raises(KeyError, match="pair_index"):
        ViewGeometry.from_batch({"global_boxes": boxes["global_boxes"], "local_boxes": boxes["local_boxes"]})


def test_between_globals_pairs_each_global_view_with_the_other():
    global_boxes = torch.arange(2 * 3 * 4, dtype=torch.float32).view(2, 3, 4)
    flips = torch.tensor([[True, False, False], [False, False, True]])
    geometry = ViewGeometry(global_boxes, torch.zeros(2, 4, 4), torch.zeros(2, 4, dtype=torch.long), flips, None)
    crossed = geometry.between_globals()
    assert crossed.pair_index.tolist() == [[1, 2, 0], [1, 2, 0]]
    assert crossed.local_boxes is global_boxes and crossed.local_flips is flips and crossed.global_flips is flips
