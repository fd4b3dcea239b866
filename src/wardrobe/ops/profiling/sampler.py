"""The greenlet-aware sampling profiler: cpu and wall stacks `hz` times a second, clocked by a real OS thread.

cpu: the frame each OS thread is executing, counted only for CPU time that thread actually used (so an idle
gevent hub costs nothing). wall: the stack of every tagged request greenlet or task, running or parked.

Two clocks. `native` (the default when the C extension is built): a C thread that never holds the GIL asks
CPython to run each tick on the interpreter's main thread at its next bytecode boundary (Py_AddPendingCall), in
whichever greenlet is running, so a CPU-bound greenlet cannot starve it and no GIL handoff happens per tick.
`thread`: a Python sampler thread that takes the GIL every tick; on a saturated machine each handoff parks the
main thread for scheduler latency, which cost a third of the API's throughput in `make bench-profiler`.
"""

from __future__ import annotations

import atexit
import logging
import os
import random
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from types import CodeType, FrameType

from wardrobe.ops.profiling import os_threads
from wardrobe.ops.profiling.activity import ACTIVITIES, ActivityRegistry, Tags
from wardrobe.ops.profiling.aggregation import Frame, Profile, Source, Stack, Window, WindowStore, merge
from wardrobe.ops.profiling.shared import SharedWindows

try:
    from wardrobe.ops.profiling import _ticker
except ImportError:  # built by `pip install` when a C compiler is present; the thread clock works without it
    _ticker = None

log = logging.getLogger(__name__)

MAX_DEPTH = 128
TRUNCATED = Frame("[truncated]", "", 0, 0)
# A thread that hogged the GIL delays the sampler; credit for at most this many periods is paid at once.
MAX_CATCH_UP = 10


class Profiler:
    def __init__(
        self,
        hz: int = 100,
        window_seconds: float = 10,
        keep_minutes: float = 15,
        clock: Callable[[], float] = time.time,
        tags: Mapping[str, str] | None = None,
        registry: ActivityRegistry = ACTIVITIES,
        on_window: Iterable[Callable[[Window], None]] = (),
        max_stacks_per_window: int = 5000,
        monotonic: Callable[[], float] = time.monotonic,
        thread_cpu_ns: Callable[[int], int | None] | None = None,
        wall_sample: int = 8,
        wall_every: int = 4,
        rng: random.Random | None = None,
        clock_mode: str = "native",
        share_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        """`share_dir`: where the processes of a box (gunicorn's workers) publish their closed windows to each
        other, so that `profile()` in any of them covers them all."""
        if not 1 <= hz <= 1000:
            raise ValueError("hz must be between 1 and 1000")
        if clock_mode not in ("native", "thread"):
            raise ValueError("clock_mode must be native or thread")
        self.clock_mode = clock_mode
        self.clock: str | None = None  # the clock in use while running: "native" or "thread"
        # A native tick runs on the thread it samples: its own CPU is taken back out of that thread's credit.
        self._own_cpu_ns = 0
        self.hz = hz
        self.period = 1.0 / hz
        self.tags: Tags = tuple(sorted((tags or {}).items()))
        self.wall_sample = wall_sample  # greenlet stacks walked per tick at most
        self.wall_every = wall_every
        self._rng = rng or random.Random()
        self._clock = clock
        self._monotonic = monotonic
        self._registry = registry
        self._on_window = list(on_window)
        self._thread_cpu_ns = thread_cpu_ns or _thread_cpu_ns
        keep = max(int(keep_minutes * 60 // window_seconds), 1)
        self.store = WindowStore(window_seconds, keep, hz, max_stacks_per_window)
        self.shared = (
            SharedWindows(share_dir, self.store.retained_seconds, clock=clock)
            if share_dir is not None
            else None
        )
        if self.shared is not None:
            self._on_window.append(self.shared.submit)
        self._names: dict[int, tuple[str, str, int, CodeType]] = {}
        self._lines: dict[tuple[int, int], Frame] = {}
        self._cpu_seen: dict[int, int] = {}
        self._cpu_credit: dict[int, int] = {}
        self._wall_credit = 0.0
        self._last_tick: float | None = None
        self._stop: os_threads.RealEvent | None = None
        self._finished: os_threads.RealEvent | None = None
        self.ticks = 0
        self.sampler_cpu_seconds = 0.0

    # lifecycle -------------------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._stop is not None and not self._stop.is_set()

    def start(self) -> None:
        if self.running:
            return
        if self.shared is not None:
            self.shared.start()
        self._stop = os_threads.RealEvent()
        self._last_tick = None
        # A process that exits without stopping us (a Huey worker) must not leave the native clock ticking
        # into interpreter finalization, where a tick finds the modules torn down. Once per profiler.
        atexit.unregister(self.stop)
        atexit.register(self.stop)
        if self.clock_mode == "native" and _ticker is not None:
            try:
                _ticker.start(self._native_tick, self.period)
            except RuntimeError:
                log.warning("the native profiler clock is taken in this process; using a sampler thread")
            else:
                self.clock = "native"
                return
        elif self.clock_mode == "native":
            log.warning("wardrobe.ops.profiling._ticker is not built; the profiler uses a sampler thread")
        self.clock = "thread"
        self._finished = os_threads.spawn(self._run)

    def stop(self, timeout: float = 2.0) -> None:
        if not self.running:
            return
        self._stop.set()
        if self.clock == "native" and _ticker is not None:
            _ticker.stop()
        if self._finished is not None:
            self._finished.wait(timeout)
        finished = self.store.finish(self._clock())
        if finished is not None:
            self._publish(finished)
        if self.shared is not None:
            self.shared.stop()  # after the last window was handed over: it stays readable for the others
        if self.ticks:
            log.info(
                "profiler stopped: %d ticks on the %s clock, %.3f CPU-s sampling (%.0f us a tick)",
                self.ticks,
                self.clock,
                self.sampler_cpu_seconds,
                self.sampler_cpu_seconds / self.ticks * 1e6,
            )

    def _run(self) -> None:
        stop = self._stop
        assert stop is not None
        next_tick = self._monotonic()
        while not stop.is_set():
            began = time.thread_time()
            try:
                self.sample()
            except Exception:
                # A profiler must never take the process down; one bad tick is only lost data.
                log.exception("profiler tick failed")
            self.sampler_cpu_seconds += time.thread_time() - began
            next_tick += self.period
            now = self._monotonic()
            if next_tick < now:
                next_tick = now
            if next_tick > now:
                os_threads.sleep(next_tick - now)

    def _native_tick(self, direct: bool) -> None:
        """Called by the native clock: on the main thread between two bytecodes of whatever was running, or
        (`direct`) on the clock's own thread while the main thread is blocked outside the interpreter."""
        if not self.running:
            return
        began = time.thread_time_ns()
        try:
            if direct:
                os_threads.OWN_THREADS.add(os_threads.get_ident())
                self.sample()
            else:
                self.sample(interrupted=(os_threads.get_ident(), sys._getframe(1)))
        except Exception:
            log.exception("profiler tick failed")
        spent = time.thread_time_ns() - began
        if not direct:
            self._own_cpu_ns += spent
        self.sampler_cpu_seconds += spent / 1e9

    # sampling --------------------------------------------------------------------------------------------

    def sample(self, interrupted: tuple[int, FrameType] | None = None) -> None:
        """Take one tick: called by the sampler thread, by the native clock, and directly by tests.

        `interrupted`: (thread ident, frame) of the code a native tick interrupted, which stands for that
        thread (its own current frame is this method)."""
        frames = sys._current_frames()
        if interrupted is not None:
            frames[interrupted[0]] = interrupted[1]
        now = self._clock()
        window, finished = self.store.window_for(now)
        if finished is not None:
            self._publish(finished)
        self.ticks += 1

        own = os_threads.OWN_THREADS
        walked: dict[int, Stack] = {}  # id(frame) -> stack, for frames walked once already this tick

        for ident, frame in frames.items():
            if ident in own:
                continue
            cpu_count = self._due_cpu_samples(ident, interrupted is not None and ident == interrupted[0])
            if cpu_count:
                stack, root = self._walk(frame)
                walked[id(frame)] = stack
                running = self._registry.running(frame, root)
                tags = running.tags if running is not None else (("thread", str(ident)),)
                window.add("cpu", tags, stack, cpu_count)
        for ident in [ident for ident in self._cpu_seen if ident not in frames]:
            self._cpu_seen.pop(ident, None)
            self._cpu_credit.pop(ident, None)

        # Wall stacks are walked every `wall_every` ticks (the due count carries the skipped ticks' weight):
        # parked greenlets' frames are cold in the CPU caches, so touching them is what a tick costs.
        wall_count = self._due_wall_samples() if self.ticks % self.wall_every == 0 else 0
        if wall_count:
            # Walking every in-flight greenlet's stack at 100 Hz costs more than the requests themselves once
            # there are hundreds of them: walk a random few and let each stand for its share of the rest, so
            # the totals stay unbiased (sum = in-flight count x ticks) at a bounded cost per tick.
            total, chosen = self._registry.sample(self.wall_sample, self._rng)
            if chosen:
                base, extra = divmod(wall_count * total, len(chosen))
                for n, (glet, activity) in enumerate(chosen):
                    # A started greenlet without a saved frame is the one executing on its thread right now.
                    frame = glet.gr_frame or frames.get(activity.thread_ident)
                    if frame is not None:
                        stack = walked.get(id(frame)) or self._walk(frame)[0]
                        window.add("wall", activity.tags, stack, base + (1 if n < extra else 0))
        if self.ticks % 1000 == 0:
            self._registry.purge_dead()

    def _due_wall_samples(self) -> int:
        now = self._monotonic()
        last, self._last_tick = self._last_tick, now
        self._wall_credit += self.period if last is None else now - last
        due = min(int(self._wall_credit / self.period), MAX_CATCH_UP)
        self._wall_credit = min(self._wall_credit - due * self.period, self.period)
        return due

    def _due_cpu_samples(self, ident: int, sampling_thread: bool = False) -> int:
        used = self._thread_cpu_ns(ident)
        if used is None:
            return 0
        if sampling_thread:
            used -= self._own_cpu_ns  # the profiler's own ticks on this thread are not the app's CPU
        previous = self._cpu_seen.get(ident)
        self._cpu_seen[ident] = used
        if previous is None:
            return 0
        period_ns = int(1e9 / self.hz)
        credit = self._cpu_credit.get(ident, 0) + max(used - previous, 0)
        due = min(credit // period_ns, MAX_CATCH_UP)
        self._cpu_credit[ident] = min(credit - due * period_ns, period_ns)
        return due

    def _walk(self, frame: FrameType | None) -> tuple[Stack, FrameType | None]:
        """The stack (root first) ending at `frame`, and its root frame (None if the stack was truncated)."""
        leaf_first: list[Frame] = []
        root = frame
        names = self._names
        lines = self._lines
        while frame is not None and len(leaf_first) < MAX_DEPTH:
            code = frame.f_code
            # f_lineno decodes the line table on every access, so (code, instruction offset) -> Frame is cached.
            # Keyed by id(code): hashing a code object hashes its constants every time (most of a tick's cost).
            # `names` holds each code object it has seen, so no id in either cache can be reused meanwhile.
            where = (id(code), frame.f_lasti)
            entry = lines.get(where)
            if entry is None:
                info = names.get(id(code))
                if info is None:
                    if len(names) > 50_000:
                        names.clear()
                        lines.clear()
                    module = frame.f_globals.get("__name__", "?")
                    info = names[id(code)] = (
                        f"{module}.{code.co_qualname}",
                        code.co_filename,
                        code.co_firstlineno,
                        code,
                    )
                if len(lines) > 200_000:
                    lines.clear()
                entry = lines[where] = Frame(info[0], info[1], info[2], frame.f_lineno or 0)
            leaf_first.append(entry)
            root, frame = frame, frame.f_back
        if frame is not None:
            leaf_first.append(TRUNCATED)
            root = None
        leaf_first.reverse()
        return tuple(leaf_first), root

    def _publish(self, window: Window) -> None:
        for listener in self._on_window:
            try:
                listener(window)
            except Exception:
                log.exception("profile window listener failed")

    # reading ---------------------------------------------------------------------------------------------

    @property
    def retained_seconds(self) -> float:
        return self.store.retained_seconds

    def profile(self, profile_type: str, seconds: float, route: str | None = None) -> Profile:
        """Samples of the last `seconds` (recent windows, the unfinished one included), with the closed windows
        of the box's other processes when they are shared; never waits for the sampler."""
        now = self._clock()
        since = now - seconds
        windows = self.store.windows_since(since)
        sources = [Source(os.getpid(), None)]
        if self.shared is not None:
            theirs, others = self.shared.windows_since(since, self.hz)
            windows += theirs
            sources += others
        start = min((window.start for window in windows), default=since)
        profile = merge(windows, profile_type, self.hz, start, now, route, self.tags)
        profile.sources = tuple(sources)
        return profile


_CPU_CLOCKS: dict[int, int] = {}


def _thread_cpu_ns(ident: int) -> int | None:
    try:
        clock = _CPU_CLOCKS.get(ident)
        if clock is None:
            if len(_CPU_CLOCKS) > 1000:
                _CPU_CLOCKS.clear()
            clock = _CPU_CLOCKS[ident] = time.pthread_getcpuclockid(ident)
        return time.clock_gettime_ns(clock)
    except (OSError, OverflowError, AttributeError):
        _CPU_CLOCKS.pop(ident, None)
        return None
