"""Closed profile windows shared by the processes of one box (gunicorn's workers) through files in one directory,
so a profile request answered by any worker shows all of them, as /metrics merges every worker's samples.

Each process writes every window it closes to a file of its own (temp file + rename, so a reader never sees half
of one) from its own OS thread; the sampler only hands the window over. A reader merges the other processes'
files with its own windows from memory. Files of a worker that died stay, and keep answering for it, until they
are older than the retained history; whichever process writes next removes them. gunicorn's `on_starting` wipes
the directory, as it wipes the metrics one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from wardrobe.ops.profiling import os_threads
from wardrobe.ops.profiling.aggregation import Frame, Source, Window

log = logging.getLogger(__name__)

SUFFIX = ".window"
FORMAT_VERSION = 1
# Far above what a window can hold (max_stacks stacks of at most 129 frames): anything bigger is not ours.
MAX_FILE_BYTES = 32 * 1024 * 1024
MAX_DECODED_BYTES = 256 * 1024 * 1024
# A temp file this old was left by a process that died while writing it.
ABANDONED_TEMP_SECONDS = 60.0


def directory_for(data_dir: str | os.PathLike[str], role: str) -> Path:
    return Path(data_dir) / "profiles" / role


def wipe(directory: str | os.PathLike[str]) -> None:
    """Start from an empty directory (gunicorn `on_starting`): a previous run's workers are not this box's now."""
    path = Path(directory)
    try:
        path.mkdir(parents=True, exist_ok=True)
        for entry in path.iterdir():
            if entry.name.endswith((SUFFIX, ".tmp")):
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
    except OSError as exc:
        # Profiles of the whole box are a convenience: the server starts without them.
        log.warning("cannot prepare the shared profile directory %s: %s", path, exc)


class _Name(NamedTuple):
    pid: int
    token: str
    start: float
    end: float


def _parse_name(name: str) -> _Name | None:
    if not name.endswith(SUFFIX):
        return None
    parts = name[: -len(SUFFIX)].split("-")
    try:
        pid, token, start_ms, end_ms = parts
        return _Name(int(pid), token, int(start_ms) / 1000, int(end_ms) / 1000)
    except ValueError:
        return None


def encode(window: Window, pid: int) -> bytes:
    """A window as compressed JSON; frames and tag sets are listed once and referred to by index."""
    frames: dict[Frame, int] = {}
    tag_sets: dict[tuple, int] = {}
    counts = []
    for (kind, tags, stack), count in window.counts.items():
        tag_index = tag_sets.setdefault(tags, len(tag_sets))
        counts.append([kind, tag_index, [frames.setdefault(frame, len(frames)) for frame in stack], count])
    payload = {
        "version": FORMAT_VERSION,
        "pid": pid,
        "hz": window.hz,
        "start": window.start,
        "end": window.end,
        "overflowed": window.overflowed,
        "frames": [list(frame) for frame in frames],
        "tags": [[list(pair) for pair in tags] for tags in tag_sets],
        "counts": counts,
    }
    return zlib.compress(json.dumps(payload, separators=(",", ":")).encode(), 1)


def decode(blob: bytes) -> Window:
    """The window `encode` wrote; raises ValueError for anything else (a corrupt or foreign file)."""
    try:
        inflater = zlib.decompressobj()
        text = inflater.decompress(blob, MAX_DECODED_BYTES)
        if inflater.unconsumed_tail or not inflater.eof:
            raise ValueError("truncated or oversized")
        payload = json.loads(text)
        if payload["version"] != FORMAT_VERSION:
            raise ValueError(f"format version {payload['version']}")
        frames = [
            Frame(str(name), str(filename), int(first), int(line))
            for name, filename, first, line in payload["frames"]
        ]
        tag_sets = [tuple((str(key), str(value)) for key, value in tags) for tags in payload["tags"]]
        window = Window(float(payload["start"]), float(payload["end"]), int(payload["hz"]))
        window.overflowed = int(payload["overflowed"])
        for kind, tag_index, stack, count in payload["counts"]:
            key = (str(kind), tag_sets[tag_index], tuple(frames[i] for i in stack))
            window.counts[key] = window.counts.get(key, 0) + int(count)
    except (zlib.error, UnicodeDecodeError, KeyError, IndexError, TypeError, ValueError) as exc:
        raise ValueError(f"not a profile window: {exc}") from None
    return window


class SharedWindows(os_threads.Handoff[Window]):
    """This process's side of the shared directory: publishes its closed windows, reads everyone else's."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        retained_seconds: float,
        clock: Callable[[], float] = time.time,
        queue_size: int = 10,
    ) -> None:
        self.directory = Path(directory)
        self.retained_seconds = retained_seconds
        self.pid = os.getpid()
        # Pids get reused: the token tells this process's files from a dead predecessor's with the same pid.
        self._token = secrets.token_hex(4)
        self._clock = clock
        super().__init__(queue_size)
        self._reported: set[str] = set()
        self.written = 0
        self.dropped = 0

    # writing ---------------------------------------------------------------------------------------------

    def start(self) -> None:
        if self.running:
            return
        if os.getpid() != self.pid:  # built before a fork: the child must not pass for its parent
            self.pid, self._token = os.getpid(), secrets.token_hex(4)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            # The worker must still serve (and profile itself) when the data dir is not writable.
            log.warning("profile windows not shared with the other workers: %s", exc)
            return
        super().start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop after writing what is queued (the window closed on stop included), waiting at most `timeout`."""
        super().stop(timeout)

    def submit(self, window: Window) -> bool:
        """The profiler's window listener: runs inside a sampler tick, so it only queues (never blocks)."""
        if not window.counts or self._stop is None:
            return False
        if not self.offer(window):
            self.dropped += 1
            return False
        return True

    def handle(self, window: Window) -> float:
        try:
            self.write(window)
            self.sweep()
        except Exception:
            # Losing one window of the box view is all a full disk or a bad file may cost.
            log.exception("sharing a profile window failed")
        return 0

    def write(self, window: Window) -> Path:
        name = f"{self.pid}-{self._token}-{int(window.start * 1000)}-{int(window.end * 1000)}{SUFFIX}"
        target = self.directory / name
        pending = self.directory / f".{name}.tmp"
        pending.write_bytes(encode(window, self.pid))
        os.replace(pending, target)
        self.written += 1
        return target

    def sweep(self) -> None:
        """Remove every process's windows older than the retained history (a dead worker's included)."""
        oldest = self._clock() - self.retained_seconds
        for entry in os.scandir(self.directory):
            parsed = _parse_name(entry.name)
            expired = False
            if parsed is not None:
                expired = parsed.end < oldest
            elif entry.name.endswith(".tmp"):
                with contextlib.suppress(OSError):
                    expired = entry.stat().st_mtime < self._clock() - ABANDONED_TEMP_SECONDS
            if expired:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(entry.path)

    # reading ---------------------------------------------------------------------------------------------

    def windows_since(self, since: float, hz: int) -> tuple[list[Window], list[Source]]:
        """The other processes' windows that end after `since` and were sampled at `hz`, and whose they are.

        A file that cannot be read (half-written by a dying process, corrupt, another version) is skipped."""
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:
            return [], []
        windows: list[Window] = []
        until: dict[int, float] = {}
        for entry in entries:
            parsed = _parse_name(entry.name)
            if parsed is None or parsed.token == self._token or parsed.end <= since:
                continue
            try:
                if entry.stat().st_size > MAX_FILE_BYTES:
                    raise ValueError("too large")
                with open(entry.path, "rb") as handle:
                    window = decode(handle.read())
            except FileNotFoundError:
                continue  # aged out meanwhile
            except (OSError, ValueError) as exc:
                if entry.name not in self._reported and len(self._reported) < 1000:
                    self._reported.add(entry.name)
                    log.warning("skipping unreadable profile window %s: %s", entry.path, exc)
                continue
            if window.hz != hz:
                continue  # sampled at another rate (before a reload): its counts are not comparable
            windows.append(window)
            until[parsed.pid] = max(until.get(parsed.pid, 0.0), window.end)
        return windows, [Source(pid, end) for pid, end in sorted(until.items())]
