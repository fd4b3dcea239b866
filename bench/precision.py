"""Cutout precision: bf16 (OpenVINO) against float32 (onnxruntime) u2netp masks, and what each costs.

For every image the float32 mask is the reference. Two things are compared with it:
- the bf16 mask of the same image;
- the float32 mask of the image re-encoded as a JPEG at quality 92: how far an invisible change of the input
  alone moves this model's mask, as a yardstick.

Images: the synthetic garments the tests use (a known subject), the load test's upload photos (blotchy textures
with no subject), and scikit-image's bundled sample photos (installed with rembg): portraits, objects, textures.
CPU per mask is measured in interleaved rounds, both engines on one thread.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.report import machine
from bench.run import RESULTS
from bench.seed import GARMENTS, garment_photo, photo
from tasks.cutout.removal import BackgroundRemover, resolve_precision

MODEL_HOME = Path(__file__).resolve().parent.parent / "var" / "models"


def images() -> list[tuple[str, str, Image.Image]]:
    """(group, name, RGB image)."""
    found: list[tuple[str, str, Image.Image]] = []
    for i, garment in enumerate(GARMENTS):
        found.append(
            ("garment", f"garment-{i}", Image.open(io.BytesIO(garment_photo(**garment))).convert("RGB"))
        )
    for i in range(6):
        found.append(("upload photo", f"upload-{i}", Image.open(io.BytesIO(photo(500 + i))).convert("RGB")))
    try:
        import skimage
    except ImportError:
        return found
    data = Path(skimage.__file__).parent / "data"
    for path in sorted([*data.glob("*.png"), *data.glob("*.jpg")]):
        with Image.open(path) as img:
            if min(img.size) >= 100:
                found.append(("sample photo", path.stem, img.convert("RGB")))
    return found


def reencoded(img: Image.Image) -> Image.Image:
    out = io.BytesIO()
    img.save(out, "JPEG", quality=92)
    return Image.open(io.BytesIO(out.getvalue())).convert("RGB")


def compare(ours: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    a, b = ours > 127, reference > 127
    union = int((a | b).sum())
    return {
        "iou": round(float((a & b).sum() / union) if union else 1.0, 4),
        "mean_abs_diff": round(float(np.abs(ours.astype(np.int16) - reference).mean()), 2),
    }


def run(rounds: int) -> dict[str, Any]:
    f32 = BackgroundRemover("u2netp", MODEL_HOME, threads=1, max_side=1024, precision="f32")
    bf16 = BackgroundRemover("u2netp", MODEL_HOME, threads=1, max_side=1024, precision="bf16")
    rows = []
    found = images()
    for group, name, img in found:
        img = img if max(img.size) <= 1024 else img.resize((1024, round(1024 * img.height / img.width)))
        reference = np.asarray(f32.mask(img), dtype=np.int16)
        rows.append(
            {
                "group": group,
                "image": name,
                "size": list(img.size),
                "subject_share": round(float((reference > 127).mean()), 3),
                "bf16": compare(np.asarray(bf16.mask(img)), reference),
                "jpeg_q92": compare(np.asarray(f32.mask(reencoded(img))), reference),
            }
        )
    timing_images = [img for group, _, img in found if group != "sample photo"]  # the product's sizes
    cpu: dict[str, list[float]] = {"f32": [], "bf16": []}
    for _ in range(rounds):
        for label, engine in (("f32", f32), ("bf16", bf16)):
            started = time.process_time()
            for img in timing_images:
                engine.mask(img)
            cpu[label].append((time.process_time() - started) / len(timing_images))
    medians = {label: statistics.median(values) for label, values in cpu.items()}
    return {
        "name": "precision",
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "engines": {"f32": f32.engine, "bf16": bf16.engine},
        "cpu_ms_per_mask": {label: round(value * 1000, 1) for label, value in medians.items()},
        "cpu_ratio_f32_over_bf16": round(medians["f32"] / medians["bf16"], 2),
        "rounds": rounds,
        "images": rows,
    }


def _spread(values: list[float], low: bool) -> str:
    """ "worst / median": the minimum for IoU (low=True), the maximum for a difference."""
    worst = min(values) if low else max(values)
    return (
        f"{worst:.3f} / {statistics.median(values):.3f}"
        if low
        else f"{statistics.median(values):.2f} / {worst:.2f}"
    )


def _group_summary(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| images | n | bf16 IoU min / median | JPEG q92 IoU min / median | bf16 mean abs diff median / max |"
        " JPEG q92 mean abs diff median / max |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for group in dict.fromkeys(r["group"] for r in rows):
        g = [r for r in rows if r["group"] == group]
        iou = [_spread([r[kind]["iou"] for r in g], low=True) for kind in ("bf16", "jpeg_q92")]
        diff = [_spread([r[kind]["mean_abs_diff"] for r in g], low=False) for kind in ("bf16", "jpeg_q92")]
        lines.append(f"| {group} | {len(g)} | {iou[0]} | {iou[1]} | {diff[0]} | {diff[1]} |")
    return lines


def markdown(result: dict[str, Any]) -> str:
    cpu = result["cpu_ms_per_mask"]
    lines = [
        f"# Cutout precision: bf16 against float32 ({result['started_at']})",
        "",
        f"{result['machine']['cpu']}, {result['machine']['cores']} cores. u2netp; float32 on "
        f"{result['engines']['f32']}, bf16 on {result['engines']['bf16']}; one thread each.",
        "",
        f"- CPU per mask (decode excluded, median of {result['rounds']} interleaved rounds over 11 photos): "
        f"float32 **{cpu['f32']} ms**, bf16 **{cpu['bf16']} ms**: **{result['cpu_ratio_f32_over_bf16']}x** less CPU.",
        "- Masks are compared with the float32 mask of the same image: IoU of the > 50 % alpha region, and the mean "
        "absolute difference of alpha on a 0-255 scale. The JPEG q92 columns are float32 on the image re-encoded "
        "at quality 92: how far an invisible change of the input alone moves this model's mask.",
        "",
        *_group_summary(result["images"]),
        "",
        "An IoU far below 1 with a small mean difference is a mask with no clear subject, where the > 50 % region is "
        "decided by a hair's breadth (textures, text, star fields).",
        "",
        "| group | image | subject share | bf16 IoU | bf16 mean abs diff | JPEG q92 IoU | JPEG q92 mean abs diff |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in result["images"]:
        lines.append(
            f"| {r['group']} | {r['image']} | {r['subject_share']:.0%} | {r['bf16']['iou']:.3f} | "
            f"{r['bf16']['mean_abs_diff']:.2f} | {r['jpeg_q92']['iou']:.3f} | {r['jpeg_q92']['mean_abs_diff']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if resolve_precision("auto") != "bf16":
        print("this CPU has no native bf16 (or OpenVINO is missing): nothing to compare", file=sys.stderr)
        return 2
    result = run(args.rounds)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "precision.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.results_dir / "precision.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
