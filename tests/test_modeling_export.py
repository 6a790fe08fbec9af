"""save_backbone and the LoRA export write the whole vision model, for every family (DINOv3's ``.model`` is its
encoder: a bare model is saved as itself, never as the submodule of that name)."""

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel

from paka_hf.modeling.backbones import PatchBackbone
from paka_hf.modeling.export import save_backbone
from paka_hf.testing import tiny_family_config


@pytest.mark.parametrize("variant", ["dinov2", "dinov3_vit"])
def test_a_bare_model_and_its_patch_backbone_save_every_tensor(tmp_path, variant):
    torch.manual_seed(0)
    backbone = PatchBackbone.from_config(tiny_family_config(variant))
    expected = backbone.model.state_dict()
    for name, model in (("bare", backbone.model), ("wrapped", backbone)):
        save_backbone(model, tmp_path / name)
        # on disk, transformers may rename (DINOv3's "model.layer" is stored as "layer"): count, then round-trip
        assert len(load_file(str(tmp_path / name / "model.safetensors"))) == len(expected)
        loaded = AutoModel.from_pretrained(tmp_path / name)
        assert type(loaded) is type(backbone.model)
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in expected.items())


def test_the_merged_lora_export_of_dinov3_holds_its_embeddings_and_final_norm(tmp_path):
    pytest.importorskip("peft")
    from paka_hf.modeling.lora import LoRASettings, add_lora, export_lora_backbone

    torch.manual_seed(0)
    backbone = PatchBackbone.from_config(tiny_family_config("dinov3_vit"))
    base = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    add_lora(backbone, LoRASettings(rank=4))
    export_lora_backbone(backbone, tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path)
    assert type(loaded).__name__ == "DINOv3ViTModel"
    state = loaded.state_dict()
    assert set(state) == set(base)
    assert len(load_file(str(tmp_path / "model.safetensors"))) == len(base)
    # B = 0 at the start: the merged model is the base, tensor for tensor (embeddings and final norm included)
    assert all(torch.equal(state[k], v) for k, v in base.items())
