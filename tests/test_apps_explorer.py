"""The feature explorer: cached features, the pictures it shows, robust image input, model-load errors in the
page, and the Gradio API through gradio_client (no browser; the browser test is test_apps_explorer_browser.py)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModel

from paka_hf.apps import explorer as explore
from paka_hf.apps import pictures as viz
from paka_hf.commands import explore as explore_command
from paka_hf.hub import default_image_processor
from paka_hf.utils.errors import PaKAUserError

RESOLUTION = 56  # 4 patches on the short side: forwards of a few milliseconds


def _save_model(path, config, seed):
    torch.manual_seed(seed)
    AutoModel.from_config(config).save_pretrained(path)
    default_image_processor().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    from paka_hf.testing import tiny_dinov2_config

    root = tmp_path_factory.mktemp("explorer_models")
    base = _save_model(root / "base", tiny_dinov2_config(), 0)
    adapted = _save_model(root / "adapted", tiny_dinov2_config(registers=2), 1)
    return base, adapted


@pytest.fixture(scope="module")
def explorer_(model_dirs):
    base, adapted = model_dirs
    return explore.FeatureExplorer.from_pretrained(adapted, base, resolution=RESOLUTION)


def _scene(width=90, height=60, seed=0):
    """Left half one texture, right half another: a click on the left should light up the left."""
    rng = np.random.default_rng(seed)
    array = np.empty((height, width, 3), dtype=np.uint8)
    array[:, : width // 2] = (200, 40, 40)
    array[:, width // 2 :] = (30, 60, 220)
    noise = rng.integers(-20, 20, array.shape)
    return Image.fromarray(np.clip(array.astype(int) + noise, 0, 255).astype(np.uint8))


def test_features_are_computed_once_per_image_and_model(explorer_, tmp_path):
    path = tmp_path / "scene.png"
    _scene().save(path)
    before = explorer_.forward_calls
    encoded = explorer_.encode(path)
    assert explorer_.forward_calls == before + 2  # one forward per model
    for _ in range(3):  # clicks, re-analysis, PCA, k-means: all from the cache
        explorer_.click(explorer_.encode(path), 10, 10)
        explorer_.pca(explorer_.encode(path), "joint")
        explorer_.clusters(explorer_.encode(path), 3)
    copy = tmp_path / "same_content.png"  # a re-upload of the same bytes (another path) is the same image
    copy.write_bytes(path.read_bytes())
    assert explorer_.encode(copy) is encoded
    assert explorer_.forward_calls == before + 2
    other = tmp_path / "other.png"
    _scene(seed=1).save(other)
    explorer_.encode(other)
    assert explorer_.forward_calls == before + 4


def test_cache_evicts_the_least_recently_used_image(model_dirs):
    base, adapted = model_dirs
    small = explore.FeatureExplorer.from_pretrained(adapted, base, resolution=RESOLUTION, cache_size=2)
    images = [_scene(seed=s) for s in range(3)]
    for image in images:
        small.encode(image)
    assert small.forward_calls == 6
    small.encode(images[2])  # still cached
    small.encode(images[0])  # evicted: computed again
    assert small.forward_calls == 8


def test_pictures_are_the_visualize_pictures(explorer_):
    encoded = explorer_.encode(_scene())
    assert encoded.shown.size == (84, 56) and encoded.grid == (4, 6)
    assert [f.shape for f in encoded.features] == [(4, 6, 32), (4, 6, 32)]
    # a click at pixel (20, 30) of the 84 x 56 picture is patch (row 2, col 1)
    query, heat, matches, (row, col) = explorer_.click(encoded, 20, 30)
    assert (row, col) == (2, 1) and matches is None
    for model_index, picture in enumerate(heat):
        sim = viz.similarity_maps(encoded.features, (model_index, row, col))[model_index]
        expected = viz.similarity_overlay(encoded.shown, sim, query=(row, col))
        assert np.array_equal(np.asarray(picture), np.asarray(expected))
    # per-model PCA is the card's PCA of that model alone; joint PCA is one fit on both
    per_model = explorer_.pca(encoded, "per model")
    assert np.array_equal(
        np.asarray(per_model[1]), np.asarray(viz.pca_picture(viz.pca_rgb([encoded.features[1]])[0], (84, 56)))
    )
    joint = explorer_.pca(encoded, "joint")
    assert np.array_equal(
        np.asarray(joint[0]), np.asarray(viz.pca_picture(viz.pca_rgb(encoded.features)[0], (84, 56)))
    )
    clusters = explorer_.clusters(encoded, 3)
    assert [c.size for c in clusters] == [(84, 56)] * 2
    with pytest.raises(PaKAUserError, match="PCA mode"):
        explorer_.pca(encoded, "both")


def test_correspondence_marks_the_best_match_in_the_second_image(explorer_):
    first, second = explorer_.encode(_scene(seed=0)), explorer_.encode(_scene(120, 60, seed=3))
    _, _, matches, (row, col) = explorer_.click(first, 5, 5, second)
    assert [m.size for m in matches] == [second.shown.size] * 2
    for model_index, picture in enumerate(matches):
        sim = viz.similarity_maps([first.features[model_index], second.features[model_index]], (0, row, col))[1]
        best = viz.top_matches(sim, 1)
        expected = viz.similarity_overlay(second.shown, sim, matches=best)
        assert np.array_equal(np.asarray(picture), np.asarray(expected))


def _encode_bytes(image: Image.Image, fmt: str, **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "kind",
    ["grayscale", "rgba", "cmyk_jpeg", "16bit_png", "palette", "tiny", "panorama"],
)
def test_any_image_the_training_stream_accepts_works(explorer_, tmp_path, kind):
    scene = _scene()
    if kind == "grayscale":
        data = _encode_bytes(scene.convert("L"), "PNG")
    elif kind == "rgba":
        rgba = scene.convert("RGBA")
        rgba.putalpha(128)
        data = _encode_bytes(rgba, "PNG")
    elif kind == "cmyk_jpeg":
        data = _encode_bytes(scene.convert("CMYK"), "JPEG")
    elif kind == "16bit_png":
        data = _encode_bytes(Image.fromarray(np.asarray(scene.convert("L"), np.uint16) * 257), "PNG")
    elif kind == "palette":
        data = _encode_bytes(scene.convert("P"), "GIF")
    elif kind == "tiny":
        data = _encode_bytes(Image.new("RGB", (1, 1), "red"), "PNG")
    else:  # 20:1 is cropped to 4:1, not turned into hundreds of patches
        data = _encode_bytes(Image.new("RGB", (1200, 60), "gray"), "PNG")
    path = tmp_path / f"{kind}.img"
    path.write_bytes(data)
    encoded = explorer_.encode(path)
    width, height = encoded.shown.size
    assert min(width, height) == RESOLUTION and max(width, height) <= explore.MAX_ASPECT_RATIO * RESOLUTION
    assert encoded.shown.mode == "RGB" and all(np.isfinite(f).all() for f in encoded.features)


def test_exif_rotated_image_is_shown_upright(explorer_, tmp_path):
    landscape = _scene(90, 60)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90° clockwise to display
    path = tmp_path / "rotated.jpg"
    landscape.save(path, exif=exif)
    encoded = explorer_.encode(path)
    assert encoded.original_size == (60, 90)  # upright: portrait
    assert encoded.shown.size[0] < encoded.shown.size[1]


def test_bad_images_give_one_line_messages(explorer_, tmp_path):
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("hello")
    with pytest.raises(explore.ImageInputError, match="could not read the image"):
        explorer_.encode(not_an_image)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(explore.ImageInputError, match="could not read the image"):
        explorer_.encode(empty)
    huge = tmp_path / "huge.png"
    Image.new("L", (3000, 2000)).save(huge)  # 6 MP, above a 5 MP limit: refused from the header
    limited = explore.FeatureExplorer(explorer_.models, resolution=RESOLUTION, max_pixels=5_000_000)
    with pytest.raises(explore.ImageInputError, match=r"3000x2000 \(6.0 MP\) is above the explorer's limit of 5 MP"):
        limited.encode(huge)
    assert limited.forward_calls == 0


def test_model_that_fails_to_load_is_a_message_not_an_exception(tmp_path, model_dirs):
    missing = tmp_path / "no_such_model"
    with pytest.raises(explore.ModelLoadError, match="could not load model"):
        explore.load_model(missing)
    pytest.importorskip("gradio")
    demo = explore.build_app(missing, model_dirs[0])
    assert "could not load model" in demo.explorer_state["error"]
    assert demo.explorer_state["explorer"] is None


def test_default_base_and_gallery(tmp_path):
    (tmp_path / "training_config.yaml").write_text("model_name_or_path: facebook/dinov2-small\n")
    assert explore.default_base(tmp_path) == "facebook/dinov2-small"
    assert explore.default_base(tmp_path / "sub") is None
    with pytest.raises(PaKAUserError, match="holds no image"):
        explore.gallery_images(tmp_path)
    Image.new("RGB", (8, 8)).save(tmp_path / "b.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "a.jpg")
    assert [p.name for p in explore.gallery_images(tmp_path)] == ["a.jpg", "b.png"]
    with pytest.raises(PaKAUserError, match="no such folder"):
        explore.gallery_images(tmp_path / "missing")


def test_main_without_a_base_is_a_user_error(tmp_path):
    pytest.importorskip("gradio")
    with pytest.raises(PaKAUserError, match="pass --base"):
        explore_command.main([str(tmp_path)])


# --------------------------------------------------------------------------------------------------
# The served app, through gradio_client
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served_app(model_dirs):
    pytest.importorskip("gradio")
    pytest.importorskip("gradio_client")
    from explorer_browser import free_port

    base, adapted = model_dirs
    demo = explore.build_app(adapted, base, resolution=RESOLUTION)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield demo, f"http://127.0.0.1:{port}/"
    demo.close()


def test_api_analyse_and_query(served_app, tmp_path):
    from gradio_client import Client, handle_file

    demo, url = served_app
    first, second = tmp_path / "first.png", tmp_path / "second.png"
    _scene(seed=0).save(first)
    _scene(120, 60, seed=5).save(second)
    client = Client(url, verbose=False)
    outputs = client.predict(handle_file(first), 4, "per model", None, api_name="/analyse")
    pictures, info = outputs[:7], outputs[-1]
    assert all(Image.open(p).size == (84, 56) for p in pictures)  # PCA x2, k-means x2, query, heat x2
    assert outputs[7] is None and outputs[8] is None  # no second image: no correspondence
    assert "4×6 patches" in info
    calls = demo.explorer_state["explorer"].forward_calls

    left = client.predict(handle_file(first), 10, 30, handle_file(second), api_name="/query")
    right = client.predict(handle_file(first), 75, 30, handle_file(second), api_name="/query")
    assert all(Image.open(p).size == (84, 56) for p in left[:3])
    assert all(Image.open(p).size == (112, 56) for p in left[3:])  # correspondence over the second image
    heat_left, heat_right = (np.asarray(Image.open(p[1]), dtype=int) for p in (left, right))
    assert np.abs(heat_left - heat_right).mean() > 1  # another patch, another map
    # the first image was re-uploaded twice but not recomputed; only the second image was new
    assert demo.explorer_state["explorer"].forward_calls == calls + 2


def test_api_reports_bad_input_and_failed_model_in_the_page(served_app, model_dirs, tmp_path):
    from gradio_client import Client, handle_file

    demo, url = served_app
    client = Client(url, verbose=False)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)  # a PNG signature and nothing else
    with pytest.raises(Exception, match="could not read the image"):
        client.predict(handle_file(bad), 4, "per model", None, api_name="/analyse")
    status = client.predict("no-such-org/no-such-model", "also-missing", api_name="/load_models")
    assert "could not load model" in status
    good = tmp_path / "good.png"
    _scene().save(good)
    with pytest.raises(Exception, match="could not load model"):  # the server answers, with the reason
        client.predict(handle_file(good), 4, "per model", None, api_name="/analyse")
    status = client.predict(str(model_dirs[1]), str(model_dirs[0]), api_name="/load_models")  # fixed: works again
    assert status.startswith("**Base:**")
    assert client.predict(handle_file(good), 4, "per model", None, api_name="/analyse")[-1].startswith("Image 90×60")


def test_a_missing_local_model_folder_is_no_such_folder(tmp_path):
    with pytest.raises(explore.ModelLoadError, match="no such folder"):
        explore.load_model(str(tmp_path / "no_model_here"))
