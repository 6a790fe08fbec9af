"""The explorer in a real browser: headless Chromium uploads an image, sees both models' panels, clicks a patch
and sees both heat maps change. Skips (saying why) where Chromium, chromedriver or Selenium is missing."""

from __future__ import annotations

import numpy as np
import pytest
from explorer_browser import ExplorerPage, chromium_missing, free_port, pixel_difference
from PIL import Image

pytestmark = pytest.mark.skipif(chromium_missing() is not None, reason=str(chromium_missing()))


@pytest.mark.slow
def test_upload_render_click_in_chromium(tmp_path, tiny_config):
    pytest.importorskip("gradio")
    import torch
    from transformers import AutoModel

    from paka_hf.apps.explorer import build_app
    from paka_hf.hub import default_image_processor

    for name, seed in (("base", 0), ("adapted", 1)):
        torch.manual_seed(seed)
        AutoModel.from_config(tiny_config()).save_pretrained(tmp_path / name)
        default_image_processor().save_pretrained(tmp_path / name)
    image = tmp_path / "scene.png"
    rng = np.random.default_rng(0)
    array = np.zeros((84, 112, 3), dtype=np.uint8)
    array[:, :56], array[:, 56:] = (210, 50, 40), (40, 70, 210)
    Image.fromarray(np.clip(array + rng.integers(0, 40, array.shape), 0, 255).astype(np.uint8)).save(image)

    demo = build_app(tmp_path / "adapted", tmp_path / "base", resolution=112)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        with ExplorerPage(f"http://127.0.0.1:{port}/", timeout_s=60) as page:
            page.upload(image)
            sources = page.wait_for_panels()  # PCA, k-means, query and heat maps of both models rendered
            for panel in ("pca-base", "pca-adapted", "heat-base", "heat-adapted"):
                shot = page.screenshot(panel)
                (tmp_path / f"{panel}-before.png").write_bytes(shot)
                assert len(np.unique(np.asarray(Image.open(tmp_path / f"{panel}-before.png").convert("L")))) > 5
            page.click_patch(0.1, 0.2)  # far from the centre patch the first heat maps were drawn for
            page.wait_for_panels(("heat-base", "heat-adapted"), sources)
            for panel in ("heat-base", "heat-adapted"):
                after = page.screenshot(panel)
                (tmp_path / f"{panel}-after.png").write_bytes(after)
                before = (tmp_path / f"{panel}-before.png").read_bytes()
                assert pixel_difference(before, after) > 2.0, f"{panel} did not change after the click"
            page.page_screenshot(tmp_path / "page.png")
    finally:
        demo.close()
    assert (tmp_path / "page.png").stat().st_size > 10_000
