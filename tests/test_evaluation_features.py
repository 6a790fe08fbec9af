"""Feature extraction: joint image/mask transforms, shapes, and computing features once per run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from paka_hf.evaluation.features import (
    FeatureCache,
    _TransformedDataset,
    build_image_mask_transform,
    extract_features,
)
from paka_hf.modeling.backbones import PatchBackbone


class ColourCoded(torch.utils.data.Dataset):
    """Images whose red channel is the class: 255 where the mask is 1, 0 where it is 0."""

    num_classes, ignore_index, split = 2, 255, "train"

    def __init__(self, n: int = 6):
        rng = np.random.default_rng(0)
        self.masks = []
        for _ in range(n):
            mask = np.zeros((60, 80), np.int64)
            x0, y0 = rng.integers(5, 40, 2)
            mask[y0 : y0 + 20, x0 : x0 + 30] = 1
            self.masks.append(mask)

    def __len__(self):
        return len(self.masks)

    def __getitem__(self, i):
        rgb = np.zeros((60, 80, 3), np.uint8)
        rgb[..., 0] = 255 * self.masks[i]
        return Image.fromarray(rgb), self.masks[i]


@pytest.mark.parametrize("augment", [False, True])
def test_image_and_mask_get_the_same_geometry(augment):
    torch.manual_seed(0)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    data = _TransformedDataset(
        ColourCoded(), build_image_mask_transform((28, 42), augment=augment, mean=mean, std=std)
    )
    for i in range(len(data)):
        image, mask = data[i]
        assert image.shape == (3, 28, 42) and mask.shape == (28, 42) and mask.dtype == torch.int64
        red = image[0] * std[0] + mean[0]  # back to [0, 1]
        agree = ((red > 0.5).long() == mask).float().mean()
        assert agree > 0.95  # only antialiased boundary pixels may differ


def test_extract_features_shapes_and_cache(tiny_config):
    backbone = PatchBackbone.from_config(tiny_config())
    data = ColourCoded()
    feats = extract_features(backbone, data, input_size=(28, 42), augment=True, passes=2, batch_size=4, progress=False)
    assert feats.features.shape == (12, 32, 2, 3) and feats.features.dtype == torch.float16
    assert feats.masks.shape == (12, 28, 42) and feats.masks.dtype == torch.uint8
    assert not torch.equal(feats.features[:6], feats.features[6:])  # two different augmented passes
    again = extract_features(backbone, data, input_size=(28, 42), augment=True, passes=2, batch_size=3, progress=False)
    torch.testing.assert_close(again.features.float(), feats.features.float(), atol=1e-2, rtol=1e-2)  # seeded

    cache = FeatureCache(backbone, batch_size=4, progress=False)
    first = cache.get(data, input_size=28, max_images=3)
    assert cache.get(data, input_size=28, max_images=3) is first and len(cache) == 1
    assert len(first) == 3
    cache.get(data, input_size=28, max_images=3, std=(0.229, 0.224, 0.255))
    assert len(cache) == 2  # another normalisation is another extraction
    with pytest.raises(ValueError, match="multiple of the patch size"):
        extract_features(backbone, data, input_size=30, progress=False)


def test_pretrained_features_beat_random_init_on_camvid(small_model_path, camvid_path):
    """Real data smoke test (skipped without the assets): 12 train / 6 val CamVid images at 112x154."""
    from transformers import AutoConfig

    from paka_hf.evaluation import CamVid, HummingbirdConfig, hummingbird_retrieval

    torch.set_num_threads(1)
    train, val = CamVid(camvid_path, "train"), CamVid(camvid_path, "val")
    scores = {}
    for name, backbone in (
        ("pretrained", PatchBackbone.from_pretrained(small_model_path)),
        ("random", PatchBackbone.from_config(AutoConfig.from_pretrained(small_model_path))),
    ):
        kwargs = dict(input_size=(112, 154), batch_size=6, progress=False)
        train_f = extract_features(backbone, train, max_images=12, **kwargs)
        val_f = extract_features(backbone, val, max_images=6, **kwargs)
        scores[name] = hummingbird_retrieval(train_f, val_f, HummingbirdConfig(), progress=False)[0].mean_iou
    assert scores["pretrained"] > scores["random"] + 5.0, scores


def test_extraction_leaves_the_global_rng_alone(tiny_config):
    backbone = PatchBackbone.from_config(tiny_config())
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    extract_features(backbone, ColourCoded(2), input_size=28, augment=True, passes=2, progress=False)
    assert torch.equal(torch.rand(3), expected)


def test_features_of_a_backbone_with_trainable_weights_keep_no_graph(tiny_config):
    """extract_features runs without autograd: a trainable backbone's batches would otherwise keep their graphs."""
    backbone = PatchBackbone.from_config(tiny_config())
    assert any(p.requires_grad for p in backbone.parameters())
    feats = extract_features(backbone, ColourCoded(), input_size=(28, 42), batch_size=4, progress=False)
    assert not feats.features.requires_grad and feats.features.grad_fn is None


def test_feature_cache_takes_a_cache_dir_and_defaults_to_memory_only(tiny_config, tmp_path):
    backbone = PatchBackbone.from_config(tiny_config())
    assert FeatureCache(backbone, progress=False).cache_dir is None
    assert FeatureCache(backbone, cache_dir=str(tmp_path), progress=False).cache_dir == tmp_path
