"""Background removal in the images worker: rembg's u2netp run directly on onnxruntime (float32) or OpenVINO
(bf16, or float32 where the CPU has no bf16), as cheap PNG cutouts that keep rembg's own result."""

import importlib.util
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.seed import GARMENTS, garment_photo
from tasks.cutout import removal
from tasks.cutout.removal import BackgroundRemover, ModelMissing, encode_png

MODEL_HOME = Path(__file__).resolve().parent.parent / "var" / "models"


BF16 = removal.resolve_precision("auto") == "bf16"
needs_bf16 = pytest.mark.skipif(not BF16, reason="no native bf16 on this CPU, or OpenVINO is not installed")
OPENVINO = importlib.util.find_spec("openvino") is not None
needs_openvino = pytest.mark.skipif(not OPENVINO, reason="OpenVINO is not installed")


@pytest.fixture(scope="module")
def f32():
    return BackgroundRemover("u2netp", MODEL_HOME, threads=1, max_side=1024, precision="f32")


@pytest.fixture(scope="module")
def bf16():
    return BackgroundRemover("u2netp", MODEL_HOME, threads=1, max_side=1024, precision="bf16")


@pytest.fixture(scope="module")
def ov_f32():
    """What "auto" runs on a CPU without bf16, whatever this CPU has."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(removal, "native_bf16", lambda: False)
        return BackgroundRemover("u2netp", MODEL_HOME, threads=1, max_side=1024, precision="auto")


@pytest.fixture(
    scope="module",
    params=["f32", pytest.param("ov_f32", marks=needs_openvino), pytest.param("bf16", marks=needs_bf16)],
)
def remover(request):
    """Every behaviour below holds on every engine."""
    made = request.getfixturevalue(request.param)
    expected = {"f32": "onnxruntime-f32", "ov_f32": "openvino-f32", "bf16": "openvino-bf16"}
    assert made.engine == expected[request.param]
    return made


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


def test_the_mask_is_rembgs_own(f32, monkeypatch):
    """The same model and pre-processing as `rembg.remove()`; only the mask's upscaling filter differs."""
    monkeypatch.setenv("U2NET_HOME", str(MODEL_HOME))
    from rembg import new_session, remove

    photo = garment_photo((1000, 900))
    with Image.open(io.BytesIO(photo)) as img:
        expected = remove(img.convert("RGB"), session=new_session("u2netp"))
    ours = np.asarray(rgba(f32.cutout(photo)), dtype=np.int16)
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


@needs_bf16
@pytest.mark.parametrize(
    "garment", GARMENTS, ids=lambda g: f"{g.get('colour', 'red')}-on-{g.get('bed', 'linen')}"
)
def test_bf16_cutouts_match_float32_on_garment_photos(f32, bf16, garment):
    """bf16 halves the CPU per cutout; on garment photos its mask is float32's to within a fraction of a percent."""
    photo = garment_photo(**garment)
    a = np.asarray(rgba(bf16.cutout(photo)).getchannel("A"), dtype=np.int16)
    b = np.asarray(rgba(f32.cutout(photo)).getchannel("A"), dtype=np.int16)
    iou = ((a > 127) & (b > 127)).sum() / ((a > 127) | (b > 127)).sum()
    assert (b > 127).mean() > 0.2  # the float32 mask found the garment at all
    assert iou > 0.99
    assert np.abs(a - b).mean() < 2.0


@needs_openvino
@pytest.mark.parametrize(
    "garment", GARMENTS, ids=lambda g: f"{g.get('colour', 'red')}-on-{g.get('bed', 'linen')}"
)
def test_openvino_float32_cutouts_are_onnxruntimes(f32, ov_f32, garment):
    """On CPUs without bf16, "auto" saves 6-11 % of the CPU per cutout and changes no pixel by more than a level."""
    photo = garment_photo(**garment)
    a = np.asarray(rgba(ov_f32.cutout(photo)), dtype=np.int16)
    b = np.asarray(rgba(f32.cutout(photo)), dtype=np.int16)
    differs = np.abs(a - b)
    assert differs.max() <= 1
    assert (differs.max(axis=2) > 0).mean() < 0.001


def test_bf16_is_chosen_only_where_the_cpu_does_it_natively(tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_vnni\n")
    assert not removal.native_bf16(cpuinfo)  # AVX-512 alone: OpenVINO would emulate bf16, slower than f32
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n")
    assert removal.native_bf16(cpuinfo)
    cpuinfo.write_text("flags\t\t: fpu avx2 amx_bf16 amx_tile\n")
    assert removal.native_bf16(cpuinfo)
    assert not removal.native_bf16(tmp_path / "missing")

    monkeypatch.setattr(removal, "native_bf16", lambda: False)
    assert removal.resolve_precision("auto") == "f32"
    assert removal.resolve_precision("f32") == "f32"
    assert removal.engine_for("auto") == ("openvino-f32" if OPENVINO else "onnxruntime-f32")
    assert removal.engine_for("f32") == "onnxruntime-f32"  # rembg's own engine, when asked for by name
    with pytest.raises(RuntimeError, match="AVX512_BF16"):
        removal.resolve_precision("bf16")
    with pytest.raises(ValueError):
        removal.resolve_precision("fp16")
    monkeypatch.setattr(removal, "native_bf16", lambda: True)
    expected = "bf16" if OPENVINO else "f32"
    assert removal.resolve_precision("auto") == expected
    assert removal.engine_for("auto") == ("openvino-bf16" if OPENVINO else "onnxruntime-f32")
    assert removal.engine_for("f32") == "onnxruntime-f32"
