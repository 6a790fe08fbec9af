"""scripts/visualize.py (paka_hf.commands.visualize), run in-process: the pictures it writes into an output
folder are the ones the model card embeds."""

from __future__ import annotations

from hub_helpers import make_export_folder

from paka_hf.commands import visualize as visualize_command
from paka_hf.testing import write_random_images


def test_visualize_script_writes_pictures_the_card_embeds(tmp_path, tiny_config):
    from paka_hf.hub import render_model_card

    out, base = tmp_path / "out", tmp_path / "base"
    make_export_folder(out, tiny_config())
    make_export_folder(base, tiny_config(), seed=5)
    images = write_random_images(tmp_path / "images", 3, (50, 70))
    code = visualize_command.main(
        [
            str(out),
            "--base",
            str(base),
            "--image_dir",
            str(images),
            "--num_images",
            "2",
            "--resolution",
            "42",
            "--n_clusters",
            "3",
        ]
    )
    assert code == 0
    assert sorted(p.name for p in (out / "pictures").iterdir()) == ["clusters.png", "pca.png", "retrieval.png"]
    text = render_model_card(out).text
    assert "](pictures/pca.png)" in text and "](pictures/retrieval.png)" in text
