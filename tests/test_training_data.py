import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from paka_hf.training.data import PaKACollator, PaKAViewStream, StreamState, decode_image, load_image_source
from paka_hf.utils.errors import EmptyDatasetError
from paka_hf.views.glim import GlimTransform


def write_images(folder: Path, count: int, size=(64, 48)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        path = folder / f"img_{i:03d}.jpg"
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def add_bad_files(folder: Path) -> None:
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "garbage.png").write_bytes(b"this is not an image at all" * 10)
    good = io.BytesIO()
    Image.fromarray(np.zeros((200, 200, 3), dtype=np.uint8) + 90).save(good, format="JPEG")
    (folder / "truncated.jpg").write_bytes(good.getvalue()[: len(good.getvalue()) // 3])


def small_transform():
    return GlimTransform(28, 14, n_local=2, patch_size=14)


def take(stream, count):
    out = []
    for sample in stream:
        out.append(sample)
        if len(out) == count:
            return out
    return out


def test_corrupt_truncated_and_empty_files_are_skipped_and_counted(tmp_path):
    write_images(tmp_path / "imgs", 5)
    add_bad_files(tmp_path / "imgs")
    source = load_image_source(str(tmp_path / "imgs"))
    stream = PaKAViewStream(source, small_transform(), seed=0)
    samples = take(stream, 10)  # two epochs of 5 good images
    assert len(samples) == 10
    # Files are read in name order: garbage.png, img_000..004.jpg, truncated.jpg, zero.jpg.
    # The first sample of epoch 0 counts garbage.png; the first of epoch 1 counts the two files that
    # ended epoch 0 and garbage.png again.
    assert [s["num_skipped"] for s in samples] == [1, 0, 0, 0, 0, 3, 0, 0, 0, 0]
    assert {s["stream_epoch"] for s in samples} == {0, 1}
    assert all(s["global_views"].shape == (2, 3, 28, 28) for s in samples)


@pytest.mark.parametrize("kind", ["L", "RGBA", "CMYK", "P", "I;16", "exif"])
def test_image_kinds_decode_to_correct_rgb(kind):
    buffer = io.BytesIO()
    if kind == "I;16":
        Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16)).save(buffer, format="PNG")
        expected = [255, 255, 255]
    elif kind == "exif":
        image = Image.new("RGB", (30, 10), (0, 200, 0))
        exif = Image.Exif()
        exif[0x0112] = 8
        image.save(buffer, format="JPEG", exif=exif.tobytes(), quality=100)
        expected = None
    elif kind == "CMYK":
        Image.new("CMYK", (8, 8), (255, 0, 255, 0)).save(buffer, format="JPEG", quality=100)  # green
        expected = [0, 255, 0]
    elif kind == "P":
        Image.new("RGB", (8, 8), (10, 20, 200)).convert("P", palette=Image.Palette.ADAPTIVE).save(buffer, format="PNG")
        expected = [10, 20, 200]
    elif kind == "RGBA":
        Image.new("RGBA", (8, 8), (0, 0, 255, 255)).save(buffer, format="PNG")
        expected = [0, 0, 255]
    else:
        Image.new("L", (8, 8), 77).save(buffer, format="PNG")
        expected = [77, 77, 77]
    from paka_hf.utils.imaging import to_rgb

    rgb = to_rgb(decode_image({"bytes": buffer.getvalue(), "path": None}))
    assert rgb.mode == "RGB"
    if kind == "exif":
        assert rgb.size == (10, 30)
    else:
        np.testing.assert_allclose(np.asarray(rgb)[4, 4], expected, atol=3)


def test_decode_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="0 bytes"):
        decode_image({"bytes": b"", "path": None})
    empty = tmp_path / "e.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="0 bytes"):
        decode_image({"bytes": None, "path": str(empty)})


def test_parquet_source_and_missing_column(tmp_path):
    import datasets

    paths = write_images(tmp_path / "imgs", 4)
    table = datasets.Dataset.from_dict({"picture": [str(p) for p in paths]}).cast_column("picture", datasets.Image())
    table.to_parquet(str(tmp_path / "data.parquet"))
    source = load_image_source(str(tmp_path / "data.parquet"), image_column="picture")
    samples = take(PaKAViewStream(source, small_transform()), 4)
    assert len(samples) == 4
    with pytest.raises(ValueError, match="no column 'image'.*--image_column_name"):
        load_image_source(str(tmp_path / "data.parquet"))


def test_stream_resumes_exactly_where_it_stopped(tmp_path):
    write_images(tmp_path / "imgs", 7)
    add_bad_files(tmp_path / "imgs")
    source = load_image_source(str(tmp_path / "imgs"))
    full = take(PaKAViewStream(source, small_transform(), seed=3, shuffle_buffer_size=4), 12)
    collate = PaKACollator()
    state = StreamState.fresh(0, 1)
    for i in range(0, 6, 2):  # consume three batches of 2
        state.record(collate(full[i : i + 2]))
    resumed = take(PaKAViewStream(source, small_transform(), seed=3, shuffle_buffer_size=4, state=state), 6)
    for a, b in zip(full[6:], resumed):
        assert torch.equal(a["local_views"], b["local_views"])
        assert torch.equal(a["global_boxes"], b["global_boxes"])
    assert state.images_skipped == sum(s["num_skipped"] for s in full[:6])


def test_resume_with_other_worker_count_is_refused(tmp_path):
    write_images(tmp_path / "imgs", 2)
    source = load_image_source(str(tmp_path / "imgs"))
    with pytest.raises(ValueError, match="same number of processes and dataloader_num_workers"):
        PaKAViewStream(source, small_transform(), num_workers=2, state=StreamState.fresh(0, 1))


def test_workers_read_disjoint_rows_and_batches_keep_one_stream(tmp_path):
    write_images(tmp_path / "imgs", 8)
    source = load_image_source(str(tmp_path / "imgs"))
    stream = PaKAViewStream(source, small_transform(), num_workers=2, record_keys=True)
    loader = torch.utils.data.DataLoader(stream, batch_size=2, num_workers=2, collate_fn=PaKACollator())
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) == 4:
            break
    assert [int(b["stream_index"]) for b in batches] == [0, 1, 0, 1]
    keys = [k for b in batches for k in b["image_keys"]]
    assert len(keys) == len(set(keys)) == 8


def test_empty_source_raises_a_clear_error(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "bad.jpg").write_bytes(b"nope")
    source = load_image_source(str(folder))
    with pytest.raises(
        EmptyDatasetError,
        match=r"no decodable image in 1 of 1 data stream\(s\): process 0 stream 0 \(1 rows, 1 undecodable\)",
    ):
        take(PaKAViewStream(source, small_transform()), 1)
    assert PaKAViewStream(source, small_transform()).streams_without_images() == [
        "process 0 stream 0 (1 rows, 1 undecodable)"
    ]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="found no images"):
        load_image_source(str(empty))


@pytest.mark.parametrize("kind", ["rgb", "L", "CMYK", "exif", "png", "truncated"])
def test_device_rendering_decode_gives_the_pillow_pixels(kind, tmp_path):
    """decode_rgb_pixels (libjpeg through torchvision for colour JPEGs) = Pillow decode + to_rgb."""
    from paka_hf.training.data import DECODE_ERRORS, decode_rgb_pixels
    from paka_hf.utils.imaging import to_rgb

    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    array = rng.integers(0, 255, (24, 40, 3), dtype=np.uint8)
    if kind == "exif":
        exif = Image.Exif()
        exif[0x0112] = 6
        Image.fromarray(array).save(buffer, format="JPEG", exif=exif.tobytes())
    elif kind == "png":
        Image.fromarray(array).save(buffer, format="PNG")
    else:
        image = Image.fromarray(array)
        image = image.convert(kind) if kind in ("L", "CMYK") else image
        image.save(buffer, format="JPEG", quality=90)
    data = buffer.getvalue()
    if kind == "truncated":
        with pytest.raises(DECODE_ERRORS):
            decode_rgb_pixels({"bytes": data[: len(data) // 3], "path": None})
        return
    path = tmp_path / "image.bin"
    path.write_bytes(data)
    expected = np.asarray(to_rgb(decode_image({"bytes": data, "path": None})))
    for value in ({"bytes": data, "path": None}, {"bytes": None, "path": str(path)}, data):
        pixels = decode_rgb_pixels(value)
        assert pixels.dtype == np.uint8 and pixels.shape == expected.shape
        np.testing.assert_array_equal(pixels, expected)
    if kind == "exif":
        assert expected.shape == (40, 24, 3)  # orientation 6: rotated upright


def test_device_rendering_stream_yields_pixels_and_draws(tmp_path):
    write_images(tmp_path / "imgs", 4)
    add_bad_files(tmp_path / "imgs")
    source = load_image_source(str(tmp_path / "imgs"))
    transform = GlimTransform(28, 14, n_local=2, patch_size=14, rendering="device")
    samples = take(PaKAViewStream(source, transform, seed=0), 4)
    assert [s["num_skipped"] for s in samples] == [1, 0, 0, 0]  # garbage.png before img_000, as on the CPU path
    assert all(s["image"].shape == (48, 64, 3) and "global_views" not in s for s in samples)
    reference = take(PaKAViewStream(load_image_source(str(tmp_path / "imgs")), small_transform(), seed=0), 4)
    for sample, ref in zip(samples, reference):  # same seed per row: same boxes whichever side renders
        assert torch.equal(sample["local_boxes"], ref["local_boxes"])
    batch = PaKACollator()(samples)
    assert batch["images"].shape == (4, 48, 64, 3) and batch["stream_position"].item() == 5


def bomb_jpeg(width: int, height: int) -> bytes:
    """A small real JPEG whose header (SOF0) announces ``width`` x ``height`` pixels: a decompression bomb."""
    buffer = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), 120, np.uint8)).save(buffer, format="JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


def test_images_above_the_pixel_limit_are_refused_from_their_header_on_every_decode_path(monkeypatch):
    """12000 x 8000 = 96 Mpx is over Pillow's 89.5 Mpx; Pillow alone only warns at open and then
    decodes. Neither the Pillow path nor the JPEG fast path may start decoding such an image."""
    from PIL import ImageFile

    from paka_hf.training.data import DEFAULT_MAX_IMAGE_PIXELS, ImageTooLargeError, decode_rgb_pixels

    assert DEFAULT_MAX_IMAGE_PIXELS == Image.MAX_IMAGE_PIXELS
    bomb = {"bytes": bomb_jpeg(12000, 8000), "path": None}

    def no_decode(*args, **kwargs):
        raise AssertionError("an image above the pixel limit was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decode)
    monkeypatch.setattr("torchvision.io.decode_jpeg", no_decode)
    for decode in (decode_image, decode_rgb_pixels):
        with pytest.raises(ImageTooLargeError, match="12000x8000"):
            decode(bomb)
        with pytest.raises(ImageTooLargeError, match="exceeds the limit of 100"):
            decode({"bytes": bomb_jpeg(16, 16)[:], "path": None}, max_pixels=100)  # 256 px: the limit is configurable
    monkeypatch.undo()
    assert decode_image({"bytes": bomb_jpeg(16, 16), "path": None}, max_pixels=256).size == (16, 16)
    assert Image.MAX_IMAGE_PIXELS == DEFAULT_MAX_IMAGE_PIXELS  # Pillow's global is left as it was


def test_the_size_limits_are_config_fields_with_checked_values(tmp_path):
    from paka_hf import PaKAConfig
    from paka_hf.utils.errors import ConfigError

    config = PaKAConfig(output_dir=str(tmp_path), max_steps=1, use_cpu=True)
    assert (config.max_image_pixels, config.max_image_side) == (Image.MAX_IMAGE_PIXELS, None)
    for bad in ({"max_image_pixels": -1}, {"max_image_side": -5}):
        with pytest.raises(ConfigError, match="must be >= 0"):
            PaKAConfig(output_dir=str(tmp_path), max_steps=1, use_cpu=True, **bad)


@pytest.mark.parametrize("rendering", ["cpu", "device"])
def test_too_large_images_are_skipped_and_counted(tmp_path, rendering):
    write_images(tmp_path / "imgs", 3)
    (tmp_path / "imgs" / "img_001_huge.jpg").write_bytes(bomb_jpeg(12000, 8000))  # read after img_001.jpg
    source = load_image_source(str(tmp_path / "imgs"))
    transform = GlimTransform(28, 14, n_local=2, patch_size=14, rendering=rendering)
    samples = take(PaKAViewStream(source, transform, seed=0), 3)
    assert [s["num_skipped"] for s in samples] == [0, 0, 1]


def image_bytes_parquet(path: Path, images: list[Path]) -> None:
    import datasets

    rows = [{"bytes": p.read_bytes(), "path": None} for p in images]
    features = datasets.Features({"image": datasets.Image()})
    datasets.Dataset.from_dict({"image": rows}, features=features).to_parquet(str(path))


def source_rows(source) -> list[str]:
    from paka_hf.training.data import image_key

    return [image_key(row["image"]) for row in source]


def test_a_folder_of_images_with_a_stray_shard_or_metadata_is_read_as_an_image_folder(tmp_path, caplog):
    """One stray .tar or .parquet (even imagefolder's own metadata.parquet) must not turn a folder of images into
    that single shard: the folder is read as the format most of its files have."""
    import logging
    import tarfile

    import datasets

    folder = tmp_path / "imgs"
    paths = write_images(folder, 6)
    datasets.Dataset.from_dict({"file_name": [p.name for p in paths[:2]], "caption": ["a", "b"]}).to_parquet(
        str(folder / "metadata.parquet")
    )
    with caplog.at_level(logging.WARNING, logger="paka_hf.training.data"):
        assert source_rows(load_image_source(str(folder))) == [str(p) for p in paths]
    assert not caplog.records  # images + imagefolder's metadata: one format, nothing to say

    image_bytes_parquet(folder / "stray.parquet", paths[:1])
    with tarfile.open(folder / "stray.tar", "w") as tar:
        tar.add(paths[0], arcname="0000.jpg")
    with caplog.at_level(logging.WARNING, logger="paka_hf.training.data"):
        assert source_rows(load_image_source(str(folder))) == [str(p) for p in paths]
    message = caplog.records[-1].getMessage()
    assert "6 images, 1 .parquet shards, 1 .tar shards" in message and "reading it as imagefolder" in message
    assert "--dataset_format parquet or --dataset_format webdataset" in message
    assert len(source_rows(load_image_source(str(folder), dataset_format="parquet"))) == 1  # the other choice
    with pytest.raises(ValueError, match="dataset_format must be one of"):
        load_image_source(str(folder), dataset_format="zip")


def test_a_folder_of_shards_with_a_stray_image_is_read_as_shards(tmp_path, caplog):
    import logging

    paths = write_images(tmp_path / "src", 4)
    folder = tmp_path / "shards"
    folder.mkdir()
    for i in range(3):
        image_bytes_parquet(folder / f"part-{i}.parquet", paths)
    (folder / "preview.jpg").write_bytes(paths[0].read_bytes())
    with caplog.at_level(logging.WARNING, logger="paka_hf.training.data"):
        source = load_image_source(str(folder))
    assert source.num_shards == 3 and sum(1 for _ in source) == 12
    assert "reading it as parquet" in caplog.records[-1].getMessage()
    with pytest.raises(ValueError, match="no .tar shards"):
        load_image_source(str(folder), dataset_format="webdataset")


def test_each_stream_is_checked_for_an_image_before_training(tmp_path):
    """One image and two processes x two workers: three of the four streams have nothing."""
    write_images(tmp_path / "imgs", 1)
    source = load_image_source(str(tmp_path / "imgs"))
    found = [
        PaKAViewStream(source, small_transform(), rank=r, world_size=2, num_workers=2).streams_without_images()
        for r in (0, 1)
    ]
    assert found == [
        ["process 0 stream 1 (0 rows, 0 undecodable)"],
        ["process 1 stream 0 (0 rows, 0 undecodable)", "process 1 stream 1 (0 rows, 0 undecodable)"],
    ]
    write_images(tmp_path / "imgs", 4)
    source = load_image_source(str(tmp_path / "imgs"))
    assert (
        PaKAViewStream(source, small_transform(), rank=1, world_size=2, num_workers=2).streams_without_images() == []
    )


def test_shuffle_buffer_memory_is_estimated_from_the_row_bytes_and_warned_about(tmp_path, monkeypatch, caplog):
    """Rows are undecoded (encoded bytes, or a path for a local folder); the buffers of a machine
    hold streams x shuffle_buffer_size rows, and a warning says when that exceeds 1/8 of its RAM."""
    import logging

    import datasets

    from paka_hf import PaKAConfig
    from paka_hf.training import data

    rows = [{"bytes": bytes(160_000), "path": None} for _ in range(8)]  # COCO-sized rows: only their length matters
    datasets.Dataset.from_dict({"image": rows}, features=datasets.Features({"image": datasets.Image()})).to_parquet(
        str(tmp_path / "coco_like.parquet")
    )
    source = load_image_source(str(tmp_path / "coco_like.parquet"))
    per_row = 160_000 + data.ROW_OVERHEAD_BYTES
    assert data.shuffle_buffer_bytes(source, 1000, 32) == 32 * 1000 * per_row
    write_images(tmp_path / "imgs", 3)
    folder_rows = data.shuffle_buffer_bytes(load_image_source(str(tmp_path / "imgs")), 1000, 32) / 32_000
    assert folder_rows < 1000  # a path per row

    default = PaKAConfig(output_dir=str(tmp_path / "o"), max_steps=1, use_cpu=True).shuffle_buffer_size
    monkeypatch.setattr(data, "total_memory_bytes", lambda: 256 * 2**30)  # an 8-GPU node, 4 workers per GPU
    with caplog.at_level(logging.WARNING, logger="paka_hf.training.data"):
        data.warn_if_shuffle_buffers_exceed_memory(source, default, 8 * 4)
        assert not caplog.records  # the default is safe (5 GB)
        data.warn_if_shuffle_buffers_exceed_memory(source, 10_000, 8 * 4)  # the old default: 51 GB > 32 GiB
    message = caplog.records[-1].getMessage()
    assert "about 47.8 GiB (32 streams" in message and "Lower shuffle_buffer_size (e.g. to 6694)" in message


@pytest.mark.parametrize("rendering", ["cpu", "device"])
def test_skipped_images_travel_named_with_their_reason(tmp_path, rendering):
    write_images(tmp_path / "imgs", 3)
    add_bad_files(tmp_path / "imgs")
    (tmp_path / "imgs" / "img_001_huge.jpg").write_bytes(bomb_jpeg(12000, 8000))  # read after img_001.jpg
    folder = tmp_path / "imgs"
    source = load_image_source(str(folder))
    transform = GlimTransform(28, 14, n_local=2, patch_size=14, rendering=rendering)
    samples = take(PaKAViewStream(source, transform, seed=0), 4)
    # Name order: garbage.png, img_000, img_001, img_001_huge, img_002, truncated.jpg, zero.jpg, then epoch 1.
    named = [[(Path(r["image"]).name, r["reason"]) for r in s["skipped_images"]] for s in samples]
    assert named == [
        [("garbage.png", "unknown format")],
        [],
        [("img_001_huge.jpg", "too many pixels")],
        [("truncated.jpg", "truncated"), ("zero.jpg", "empty file"), ("garbage.png", "unknown format")],
    ]
    assert [s["num_skipped"] for s in samples] == [len(n) for n in named]
    huge = samples[2]["skipped_images"][0]
    assert huge["image"] == str(folder / "img_001_huge.jpg") and "96,000,000 pixels" in huge["detail"]
    batch = PaKACollator()(samples[2:])
    assert batch["skipped_images"] == samples[2]["skipped_images"] + samples[3]["skipped_images"]
    assert int(batch["num_skipped"]) == 4


def test_skip_reasons_name_each_kind_of_unreadable_file():
    from PIL import UnidentifiedImageError

    from paka_hf.training.data import EmptyImageError, ImageTooLargeError, skip_reason

    assert skip_reason(ImageTooLargeError("12000x8000")) == "too many pixels"
    assert skip_reason(Image.DecompressionBombError("bomb")) == "too many pixels"
    assert skip_reason(EmptyImageError("0 bytes")) == "empty file"
    assert skip_reason(UnidentifiedImageError("cannot identify")) == "unknown format"
    assert skip_reason(OSError("image file is truncated (3 bytes not processed)")) == "truncated"
    assert skip_reason(OSError("broken data stream")) == "corrupt"
    assert skip_reason(SyntaxError("not a PNG file")) == "corrupt"


def test_the_skipped_images_list_appends_and_reads_back_past_a_torn_last_line(tmp_path):
    from paka_hf.training.data import append_skipped_images, read_skipped_images, skipped_images_message

    path = tmp_path / "out" / "skipped_images.jsonl"
    assert read_skipped_images(path) == []
    first = [{"image": "a.jpg", "reason": "truncated", "detail": "x"}]
    second = [{"image": f"b{i}.png", "reason": "empty file", "detail": ""} for i in range(7)]
    append_skipped_images(path, first)
    append_skipped_images(path, second)
    assert read_skipped_images(path) == first + second
    with open(path, "a") as handle:
        handle.write('{"image": "c.jp')  # a crash mid-append
    assert read_skipped_images(path) == first + second
    message = skipped_images_message(second, 8, path)
    assert message == (
        "skipped 7 new unreadable image(s): b0.png (empty file), b1.png (empty file), b2.png (empty file), "
        f"b3.png (empty file), b4.png (empty file) and 2 more; all 8 are listed in {path}"
    )
