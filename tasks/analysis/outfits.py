"""The deterministic outfit rule engine: one item per slot, season and formality compatible, colours in harmony.

Same wardrobe and request in, same outfits out — the AI only chooses among and names what this proposes.
"""

from __future__ import annotations

import colorsys
import itertools
from typing import Any

NEUTRALS = {
    "black",
    "white",
    "grey",
    "gray",
    "beige",
    "navy",
    "cream",
    "ivory",
    "denim",
    "khaki",
    "brown",
    "camel",
}
FORMALITY = {  # occasion -> acceptable formality range (1 sporty .. 5 black tie)
    "everyday": (1, 3),
    "travel": (1, 3),
    "sport": (1, 2),
    "date": (2, 4),
    "work": (3, 4),
    "party": (3, 5),
    "formal": (4, 5),
}
WARM_LAYER_SEASONS = {"winter", "demi-season"}
PER_SLOT = 8  # items considered per slot: bounds the search (a few thousand combinations at most)


def _season_ok(item: dict[str, Any], season: str | None) -> bool:
    return season is None or item.get("season") in (None, season, "all-season")


def _formality_ok(item: dict[str, Any], occasion: str | None) -> bool:
    low, high = FORMALITY.get(occasion or "everyday", (1, 5))
    value = item.get("formality")
    return value is None or low <= value <= high


def _hues(item: dict[str, Any]) -> list[float]:
    hues = []
    for color in item.get("colors") or []:
        if (color.get("name") or "").lower() in NEUTRALS:
            continue
        hex_ = color.get("hex") or ""
        if len(hex_) == 7 and hex_.startswith("#"):
            try:
                r, g, b = (int(hex_[i : i + 2], 16) / 255 for i in (1, 3, 5))
            except ValueError:
                continue
            h, s, v = colorsys.rgb_to_hsv(r, g, b)
            if s > 0.2 and v > 0.2:  # washed-out or very dark colours behave as neutrals
                hues.append(h * 360)
    return hues


def colour_harmony(items: list[dict[str, Any]]) -> float:
    """1.0 for all-neutral or analogous/complementary accents, lower as accents clash."""
    hues = [h for item in items for h in _hues(item)[:1]]
    if len(hues) <= 1:
        return 1.0
    score = 1.0
    for a, b in itertools.combinations(hues, 2):
        d = abs(a - b) % 360
        d = min(d, 360 - d)
        if d <= 40 or 150 <= d <= 210:  # analogous or complementary
            continue
        score -= 0.35 if 60 <= d < 150 else 0.2
    return max(score, 0.0)


def _score(items: list[dict[str, Any]], occasion: str | None, style: list[str]) -> float:
    harmony = colour_harmony(items)
    styles = {i.get("style") for i in items if i.get("style")}
    coherence = 1.0 if len(styles) <= 1 else 0.8 if len(styles) == 2 else 0.5
    liked = 0.1 * sum(1 for i in items if i.get("style") in style)
    target = sum(FORMALITY.get(occasion or "everyday", (1, 5))) / 2
    known = [i["formality"] for i in items if i.get("formality") is not None]
    closeness = 1.0 - (abs(sum(known) / len(known) - target) / 4 if known else 0.0)
    return round(2 * harmony + coherence + closeness + liked, 4)


def candidates(
    wardrobe: list[dict[str, Any]],
    *,
    occasion: str | None = None,
    season: str | None = None,
    preferred_styles: list[str] | None = None,
    limit: int = 12,
) -> list[dict[str, Any]]:
    """Scored outfits, best first. When the wardrobe cannot satisfy the occasion's formality (or then the
    season), the constraint is relaxed rather than answering nothing, and the outfits say so."""
    for relaxed, strict_occasion, strict_season in (
        (None, True, True),
        ("formality", False, True),
        ("season", False, False),
    ):
        found = _candidates(
            wardrobe,
            occasion=occasion,
            season=season if strict_season else None,
            formality=strict_occasion,
            preferred_styles=preferred_styles,
            limit=limit,
        )
        if found:
            return [{**o, "relaxed": relaxed} for o in found] if relaxed else found
    return []


def _candidates(
    wardrobe: list[dict[str, Any]],
    *,
    occasion: str | None = None,
    season: str | None,
    formality: bool,
    preferred_styles: list[str] | None,
    limit: int,
) -> list[dict[str, Any]]:
    """[{"item_ids": [...], "slots": {...}, "score": float}], best first."""
    style = preferred_styles or []
    usable = [i for i in wardrobe if _season_ok(i, season) and (not formality or _formality_ok(i, occasion))]
    usable.sort(key=lambda i: str(i["id"]))  # deterministic whatever order the caller passes
    by_slot: dict[str, list[dict[str, Any]]] = {}
    for item in usable:
        by_slot.setdefault(item.get("category") or "", []).append(item)
    slot = {k: v[:PER_SLOT] for k, v in by_slot.items()}

    bases: list[dict[str, dict[str, Any]]] = [
        {"top": t, "bottom": b} for t, b in itertools.product(slot.get("top", []), slot.get("bottom", []))
    ] + [{"dress": d} for d in slot.get("dress", [])]
    shoes = slot.get("shoes", [])[:6] or [None]
    warm = season in WARM_LAYER_SEASONS
    outer = slot.get("outerwear", [])[:3] if warm else [None, *slot.get("outerwear", [])[:2]]
    outer = outer or [None]
    bags = [None, *slot.get("bag", [])[:3]]

    scored = []
    for base, shoe, layer, bag in itertools.product(bases, shoes, outer, bags):
        outfit = dict(base)
        for name, item in (("shoes", shoe), ("outerwear", layer), ("bag", bag)):
            if item is not None:
                outfit[name] = item
        items = list(outfit.values())
        ids = [str(i["id"]) for i in items]
        scored.append(
            {
                "item_ids": ids,
                "slots": {k: str(v["id"]) for k, v in outfit.items()},
                "score": _score(items, occasion, style),
            }
        )
    scored.sort(key=lambda o: (-o["score"], o["item_ids"]))

    # Prefer variety: an item already used in a chosen outfit makes the next one less attractive.
    chosen: list[dict[str, Any]] = []
    used: dict[str, int] = {}
    for outfit in scored:
        if len(chosen) >= limit:
            break
        repeats = sum(used.get(i, 0) for i in outfit["item_ids"])
        if repeats > len(chosen) // 2:
            continue
        chosen.append(outfit)
        for i in outfit["item_ids"]:
            used[i] = used.get(i, 0) + 1
    return chosen
