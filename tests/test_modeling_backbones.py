import pytest
import torch
from transformers import AutoModel, ViTConfig

from paka_hf.modeling.backbones import PatchBackbone, ProjectionHead, load_backbone
from paka_hf.testing import tiny_dinov2_config


@pytest.mark.parametrize("registers", [0, 4])
@pytest.mark.parametrize("patch_size", [14, 16])
def test_grid_shape_for_non_square_inputs_and_prefix_dropped(registers, patch_size):
    backbone = PatchBackbone.from_config(tiny_dinov2_config(registers=registers, patch_size=patch_size)).eval()
    pixels = torch.randn(2, 3, patch_size * 3, patch_size * 5)
    grid = backbone(pixels)
    assert grid.shape == (2, 32, 3, 5)
    assert backbone.num_prefix_tokens == 1 + registers
    hidden = backbone.model(pixel_values=pixels).last_hidden_state
    assert hidden.shape[1] == 1 + registers + 15
    # token k of the sequence (after the prefix) is grid cell (k // 5, k % 5)
    assert torch.allclose(grid[:, :, 1, 2], hidden[:, 1 + registers + 7], atol=1e-6)
    assert torch.allclose(grid[:, :, 2, 4], hidden[:, -1], atol=1e-6)


def test_round_trip_through_a_local_directory(tmp_path):
    backbone = PatchBackbone.from_config(tiny_dinov2_config(registers=2)).eval()
    backbone.model.save_pretrained(tmp_path)
    loaded = PatchBackbone.from_pretrained(tmp_path).eval()
    auto = AutoModel.from_pretrained(tmp_path).eval()
    pixels = torch.randn(1, 3, 56, 42)
    assert torch.allclose(loaded(pixels), backbone(pixels), atol=1e-6)
    assert type(auto).__name__ == "Dinov2WithRegistersModel"
    with_drop_path = load_backbone(tmp_path, drop_path_rate=0.1)
    assert with_drop_path.config.drop_path_rate == 0.1


def test_errors_tell_the_user_what_to_do(tmp_path):
    with pytest.raises(ValueError, match="not a multiple of the patch size 14"):
        PatchBackbone.from_config(tiny_dinov2_config())(torch.randn(1, 3, 50, 56))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        PatchBackbone.from_config(tiny_dinov2_config())(torch.randn(3, 56, 56))
    vit = ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    AutoModel.from_config(vit).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="'vit' model; paka_hf supports the model types dinov2"):
        PatchBackbone.from_pretrained(tmp_path)


def test_projection_head_maps_tokens():
    head = ProjectionHead(32, hidden_dim=64, out_dim=16)
    assert head(torch.randn(3, 49, 32)).shape == (3, 49, 16)
    assert ProjectionHead(384).mlp[-1].out_features == 256  # docs/METHOD.md default 2048/2048/256
    with pytest.raises(ValueError, match=r"\(\.\.\., 32\)"):
        head(torch.randn(3, 49, 31))


def test_real_pretrained_vit_s14(small_model_path):
    backbone = PatchBackbone.from_pretrained(small_model_path).eval()
    assert sum(p.numel() for p in backbone.parameters()) == 22_056_576
    with torch.no_grad():
        grid = backbone(torch.randn(1, 3, 224, 308))
    assert grid.shape == (1, 384, 16, 22)
    assert torch.isfinite(grid).all()
