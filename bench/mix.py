"""The session mix's shape, shared by bench/locustfile.py and the drivers that start it (bench/run.py,
bench/api_capacity.py), which cannot import the locustfile: Locust monkey-patches the process on import."""

from __future__ import annotations

import argparse
import math

# The ids bench/seed.py treats as the seeded population's, [user_base, user_base + 10^8): a user there would make
# the next run reseed. Onboarding accounts start above them.
SEEDED_ID_SPAN = 100_000_000


def share(raw: str) -> float:
    """--onboarding-share: a fraction from 0 to 1."""
    value = float(raw)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{raw} is not a fraction from 0 to 1")
    return value


def photo_range(raw: str) -> tuple[int, int]:
    """--photos-per-visit, '10-20' (or '15'): how many photos an onboarding user uploads in a visit, drawn
    uniformly."""
    low, _, high = raw.partition("-")
    try:
        bounds = (int(low), int(high or low))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not N or N-M") from None
    if not 1 <= bounds[0] <= bounds[1]:
        raise argparse.ArgumentTypeError(f"{raw!r}: need 1 <= N <= M")
    return bounds


def onboarding_users(users: int, onboarding_share: float) -> int:
    """How many of `users` are onboarding users: rounded up, so any share above 0 has one."""
    if onboarding_share <= 0:
        return 0
    return min(users, math.ceil(onboarding_share * users - 1e-9))


def onboarding_floor(user_base: int, population: int) -> int:
    """The first Telegram id an onboarding account may have: above every seeded one."""
    return user_base + max(population, SEEDED_ID_SPAN)
