"""The fixed palette of colour names Wardrobe speaks, and naming of a pixel colour by its nearest entry.

OpenAI is asked to answer in these names too, so outfits can match colours whoever described the item.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass


@dataclass(frozen=True)
class PaletteColor:
    name: str
    hex: str

    @property
    def rgb(self) -> tuple[int, int, int]:
        return hex_to_rgb(self.hex)


# Anchors are typical garment shades rather than pure sRGB primaries: a "red" shirt photographed
# indoors is nearer (190, 30, 45) than (255, 0, 0), and the naming is by nearest anchor.
PALETTE: tuple[PaletteColor, ...] = (
    PaletteColor("black", "#1c1c1c"),
    PaletteColor("white", "#f5f5f2"),
    PaletteColor("grey", "#8c8c8c"),
    PaletteColor("beige", "#d9c3a0"),
    PaletteColor("brown", "#7b4a2d"),
    PaletteColor("red", "#c0202d"),
    PaletteColor("burgundy", "#6e1a2c"),
    PaletteColor("pink", "#ee9bb5"),
    PaletteColor("orange", "#eb7a28"),
    PaletteColor("yellow", "#f0cf3c"),
    PaletteColor("olive", "#6b6b2a"),
    PaletteColor("green", "#2e8b4a"),
    PaletteColor("teal", "#128282"),
    PaletteColor("light blue", "#8fbbe3"),
    PaletteColor("blue", "#2d55b4"),
    PaletteColor("navy", "#1d2950"),
    PaletteColor("purple", "#6c3a96"),
)

COLOR_NAMES: tuple[str, ...] = tuple(color.name for color in PALETTE)

# Extra shades a name also covers. Lab distance is least faithful among saturated blues and very dark
# colours, where one anchor per name sends pure blue to "purple" and charcoal to "black".
_MORE_SHADES: dict[str, tuple[str, ...]] = {
    "grey": ("#505050", "#b4b4b4"),
    "brown": ("#4a2f20", "#a0522d"),
    "red": ("#ff0000",),
    "burgundy": ("#800000",),
    "green": ("#006400", "#3cb043"),
    "blue": ("#0000ff", "#1e64c8", "#4169e1"),
    "navy": ("#000080", "#232d46"),
    "purple": ("#800080",),
}


def hex_to_rgb(value: str) -> tuple[int, int, int]:
    value = value.lstrip("#")
    return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)


def rgb_to_hex(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def _linear(channel: int) -> float:
    c = channel / 255.0
    return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4


def _lab(rgb: tuple[int, int, int]) -> tuple[float, float, float]:
    # CIELAB (D65): Euclidean distance there tracks what a person calls "the same colour" far better
    # than distance in RGB, which confuses dark reds with browns and navies with blacks.
    r, g, b = (_linear(c) for c in rgb)
    x = (0.4124 * r + 0.3576 * g + 0.1805 * b) / 0.95047
    y = 0.2126 * r + 0.7152 * g + 0.0722 * b
    z = (0.0193 * r + 0.1192 * g + 0.9505 * b) / 1.08883

    def f(t: float) -> float:
        return t ** (1 / 3) if t > 0.008856 else 7.787 * t + 16 / 116

    fx, fy, fz = f(x), f(y), f(z)
    return 116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)


_ANCHORS = tuple(
    (color, _lab(hex_to_rgb(shade)))
    for color in PALETTE
    for shade in (color.hex, *_MORE_SHADES.get(color.name, ()))
)


@functools.lru_cache(maxsize=4096)
def nearest(rgb: tuple[int, int, int]) -> PaletteColor:
    """The palette entry a person would most likely name this colour."""
    lab = _lab(rgb)
    return min(_ANCHORS, key=lambda entry: sum((a - b) ** 2 for a, b in zip(entry[1], lab, strict=True)))[0]
