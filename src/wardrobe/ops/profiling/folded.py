"""A `Profile` as folded stacks (`root;caller;leaf 42`), the format flamegraph.pl and Pyroscope ingest."""

from __future__ import annotations

from wardrobe.ops.profiling.aggregation import Profile, Stack


def frame_label(name: str) -> str:
    # ';' separates frames and a newline ends the record; neither may appear inside a name.
    return name.replace(";", ":").replace("\n", " ").replace("\r", " ") or "?"


def fold(stack: Stack) -> str:
    return ";".join(frame_label(frame.name) for frame in stack)


def folded_counts(profile: Profile) -> dict[str, int]:
    """Counts per folded stack; frames differing only in line number are merged."""
    counts: dict[str, int] = {}
    for (_, stack), count in profile.samples.items():
        if not stack:
            continue
        key = fold(stack)
        counts[key] = counts.get(key, 0) + count
    return counts


def render(profile: Profile) -> str:
    counts = folded_counts(profile)
    return "".join(f"{stack} {count}\n" for stack, count in sorted(counts.items()))
