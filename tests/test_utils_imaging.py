import io

import numpy as np
import pytest
from PIL import Image

from paka_hf.utils.imaging import to_rgb


def test_sixteen_bit_grayscale_is_rescaled_not_clipped():
    data = np.array([[0, 1000, 32768, 65535]], dtype=np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(data).save(buffer, format="PNG")
    image = Image.open(io.BytesIO(buffer.getvalue()))
    rgb = np.asarray(to_rgb(image))
    assert rgb.shape == (1, 4, 3)
    np.testing.assert_array_equal(rgb[0, :, 0], [0, 4, 128, 255])


def test_float_image_in_unit_range():
    image = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    np.testing.assert_array_equal(np.asarray(to_rgb(image))[0, :, 1], [0, 128, 255])


def test_exif_rotation_is_applied():
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 10, 20))  # blue band on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif.tobytes(), quality=95)
    upright = to_rgb(Image.open(io.BytesIO(buffer.getvalue())))
    assert upright.size == (20, 40)
    top = np.asarray(upright)[2, 10]
    assert top[2] > 200 and top[0] < 60  # the left band is now on top


def test_transparency_composites_on_white_and_cmyk_converts():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert np.asarray(to_rgb(rgba))[0, 0].tolist() == [255, 255, 255]
    half = Image.new("RGBA", (4, 4), (0, 0, 0, 128))
    assert abs(int(np.asarray(to_rgb(half))[0, 0, 0]) - 127) <= 1
    cmyk = Image.new("CMYK", (4, 4), (0, 255, 255, 0))  # pure red in CMYK
    assert np.asarray(to_rgb(cmyk))[0, 0].tolist() == [255, 0, 0]
    palette = Image.new("RGB", (4, 4), (0, 128, 0)).convert("P", palette=Image.Palette.ADAPTIVE)
    assert np.asarray(to_rgb(palette))[0, 0].tolist() == [0, 128, 0]


def test_empty_image_is_rejected():
    with pytest.raises(ValueError, match="no pixels"):
        to_rgb(Image.new("RGB", (0, 5)))
