"""Background removal in the images worker: rembg's u2netp run directly on onnxruntime, as cheap PNG cutouts that
keep rembg's own result."""

import io
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from tasks.removal import BackgroundRemover, ModelMissing, encode_png

MODEL_HOME = Path(__file__).resolve().parent.parent / "var" / "models"


def garment_photo(size=(800, 800), fmt="JPEG", mode="RGB") -> bytes:
    """A shaded red shirt on a lightly textured bed, with sensor noise."""
    width, height = size
    img = Image.new("RGB", size, (232, 230, 224))
    draw = ImageDraw.Draw(img)
    rng = random.Random(7)
    for _ in range(40):
        x, y, r = rng.randrange(width), rng.randrange(height), rng.randrange(10, max(11, width // 6))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(rng.randrange(215, 245) for _ in range(3)))
    sx, sy = width / 640, height / 640
    shirt = [(200, 120), (440, 120), (560, 260), (470, 300), (450, 560), (190, 560), (170, 300), (80, 260)]
    draw.polygon([(x * sx, y * sy) for x, y in shirt], fill=(190, 25, 35))
    img = img.filter(ImageFilter.GaussianBlur(1.5))
    img = Image.blend(img, Image.effect_noise(size, 25).convert("RGB"), 0.06)
    out = io.BytesIO()
    img.convert(mode).save(out, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return out.getvalue()


@pytest.fixture(scope="module")
def remover():
    return BackgroundRemover("u2netp", MODEL_HOME, threads=1, max_side=1024)


def rgba(png: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(png))
    assert img.format == "PNG" and img.mode == "RGBA"
    return img


def test_a_cutout_keeps_the_item_and_clears_the_background(remover):
    cutout = rgba(remover.cutout(garment_photo()))
    assert cutout.size == (800, 800)  # never upscaled
    alpha = np.asarray(cutout.getchannel("A"))
    assert alpha[:40, :40].max() < 30  # the bed is gone
    assert alpha[400, 400] > 200  # the shirt is kept
    assert cutout.getpixel((400, 400))[0] > 120  # and still red


def test_a_large_photo_is_cut_out_at_max_side_keeping_its_shape(remover):
    for size in [(1600, 1200), (4000, 3000)]:  # 4000x3000 is also decoded at half scale first
        cutout = rgba(remover.cutout(garment_photo(size)))
        assert cutout.size == (1024, 768)
        assert cutout.getchannel("A").getpixel((512, 384)) > 200


@pytest.mark.parametrize(("fmt", "mode"), [("PNG", "RGBA"), ("PNG", "L"), ("WEBP", "RGB")])
def test_other_formats_and_modes_give_the_same_kind_of_cutout(remover, fmt, mode):
    cutout = rgba(remover.cutout(garment_photo((640, 480), fmt=fmt, mode=mode)))
    assert cutout.size == (640, 480)
    assert cutout.getchannel("A").getpixel((320, 240)) > 200


def test_the_mask_is_rembgs_own(remover, monkeypatch):
    """The same model and pre-processing as `rembg.remove()`; only the mask's upscaling filter differs."""
    monkeypatch.setenv("U2NET_HOME", str(MODEL_HOME))
    from rembg import new_session, remove

    photo = garment_photo((1000, 900))
    with Image.open(io.BytesIO(photo)) as img:
        expected = remove(img.convert("RGB"), session=new_session("u2netp"))
    ours = np.asarray(rgba(remover.cutout(photo)), dtype=np.int16)
    theirs = np.asarray(expected, dtype=np.int16)
    a, b = ours[..., 3], theirs[..., 3]
    iou = ((a > 127) & (b > 127)).sum() / ((a > 127) | (b > 127)).sum()
    assert iou > 0.99
    assert np.abs(a - b).mean() < 1.0
    assert np.abs(ours[..., :3] - theirs[..., :3]).mean() < 1.0  # rembg's premultiplied colours, kept


@pytest.mark.parametrize("size", [(1, 1), (7, 3), (333, 101)])
def test_encode_png_round_trips_exactly(size):
    pixels = np.random.default_rng(1).integers(0, 256, (size[1], size[0], 4), dtype=np.uint8)
    decoded = rgba(encode_png(pixels))
    assert decoded.size == size
    assert np.array_equal(np.asarray(decoded), pixels)


def test_a_missing_model_is_reported_not_fetched(tmp_path):
    with pytest.raises(ModelMissing):
        BackgroundRemover("u2netp", tmp_path, threads=1, max_side=1024)
