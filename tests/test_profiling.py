"""The greenlet-aware profiler: what an operator sees in pprof, folded and flame graph output and in Pyroscope."""

from __future__ import annotations

import gzip
import json
import random
import shutil
import subprocess
import sys
import textwrap
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import falcon
import falcon.testing
import gevent
import gevent.event
import pytest
import requests

from tests.fakes.pyroscope_server import PyroscopeServer, parse_folded
from wardrobe.ops.profiling import (
    ActivityRegistry,
    FlamegraphResource,
    PprofResource,
    Profiler,
    ProfilingMiddleware,
    PyroscopePusher,
    folded,
    shared,
    task_context,
)
from wardrobe.ops.profiling import pprof as pprof_encoder
from wardrobe.ops.profiling.aggregation import OVERFLOW_STACK, Frame, Window

# --- a minimal protobuf reader, enough to check profile.proto ------------------------------------------


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, pos


def _fields(data: bytes) -> list[tuple[int, int | bytes]]:
    fields, pos = [], 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 2:
            length, pos = _varint(data, pos)
            value, pos = data[pos : pos + length], pos + length
        else:
            raise AssertionError(f"unexpected wire type {wire}")
        fields.append((number, value))
    return fields


def _ints(fields, number) -> list[int]:
    """A repeated int field, packed or not."""
    out = []
    for n, value in fields:
        if n != number:
            continue
        if isinstance(value, bytes):
            pos = 0
            while pos < len(value):
                item, pos = _varint(value, pos)
                out.append(item)
        else:
            out.append(value)
    return out


def _one(fields, number, default=0):
    values = [value for n, value in fields if n == number]
    assert len(values) <= 1, f"field {number} repeated"
    return values[0] if values else default


def decode_profile(blob: bytes) -> dict:
    """Decode a gzipped profile.proto and check on the way every rule `go tool pprof` insists on (see wardrobe.ops.profiling.pprof)."""
    top = _fields(gzip.decompress(blob))
    strings = [value.decode() for n, value in top if n == 6]
    assert strings and strings[0] == "", "string_table[0] must be the empty string"

    def s(index: int) -> str:
        assert 0 <= index < len(strings), f"string index {index} out of range"
        return strings[index]

    sample_types = [(s(_one(f, 1)), s(_one(f, 2))) for f in (_fields(v) for n, v in top if n == 1)]
    functions = {}
    for message in (_fields(v) for n, v in top if n == 5):
        fid = _one(message, 1)
        assert fid and fid not in functions, "function ids must be nonzero and unique"
        functions[fid] = {
            "name": s(_one(message, 2)),
            "filename": s(_one(message, 4)),
            "start_line": _one(message, 5),
        }
    mappings = {_one(_fields(v), 1) for n, v in top if n == 3}
    assert 0 not in mappings
    locations = {}
    for message in (_fields(v) for n, v in top if n == 4):
        lid = _one(message, 1)
        assert lid and lid not in locations, "location ids must be nonzero and unique"
        mapping_id = _one(message, 2)
        assert mapping_id == 0 or mapping_id in mappings
        lines = [_fields(v) for n, v in message if n == 4]
        assert lines, "every location needs a line"
        for line in lines:
            assert _one(line, 1) in functions, "line refers to an unknown function"
        locations[lid] = [(functions[_one(line, 1)], _one(line, 2)) for line in lines]
    samples = []
    for message in (_fields(v) for n, v in top if n == 2):
        location_ids = _ints(message, 1)
        values = _ints(message, 2)
        assert len(values) == len(sample_types), "one value per sample type"
        for lid in location_ids:
            assert lid in locations, "sample refers to an unknown location"
        labels = {}
        for label in (_fields(v) for n, v in message if n == 3):
            labels[s(_one(label, 1))] = s(_one(label, 2))
        frames = [locations[lid][0][0]["name"] for lid in location_ids]
        samples.append({"leaf_first": frames, "values": values, "labels": labels})
    period_type = _fields(_one(top, 11, b""))
    return {
        "sample_types": sample_types,
        "samples": samples,
        "functions": functions,
        "period_type": (s(_one(period_type, 1)), s(_one(period_type, 2))),
        "period": _one(top, 12),
        "time_nanos": _one(top, 9),
        "duration_nanos": _one(top, 10),
    }


def folded_lines(text: str) -> dict[str, int]:
    return parse_folded(text.encode())


# --- in-process, no gevent patching ----------------------------------------------------------------------


def test_pprof_of_a_parked_greenlet_is_well_formed_and_labelled() -> None:
    registry = ActivityRegistry()
    profiler = Profiler(hz=100, window_seconds=1, registry=registry, tags={"host": "test-host"})

    def slow_handler() -> None:
        with registry.context((("method", "GET"), ("route", "/slow"))):
            gevent.sleep(0.6)

    profiler.start()
    try:
        gevent.spawn(slow_handler).join()
    finally:
        profiler.stop()

    decoded = decode_profile(pprof_encoder.encode_gzip(profiler.profile("wall", 60)))
    assert decoded["sample_types"] == [("samples", "count"), ("wall", "nanoseconds")]
    assert decoded["period_type"] == ("wall", "nanoseconds")
    assert decoded["period"] == 10_000_000
    assert decoded["time_nanos"] > 1_600_000_000 * 10**9
    assert decoded["duration_nanos"] > 0
    slow = [sample for sample in decoded["samples"] if sample["labels"].get("route") == "/slow"]
    assert slow, "the tagged greenlet must appear in the wall profile"
    assert all(
        sample["labels"] == {"route": "/slow", "method": "GET", "host": "test-host"} for sample in slow
    )
    assert sum(sample["values"][0] for sample in slow) >= 20
    assert all(sample["values"][1] == sample["values"][0] * decoded["period"] for sample in slow)
    # Leaf first: parked in gevent's sleep, called from our handler.
    assert slow[0]["leaf_first"][0] == "gevent.hub.sleep"
    assert any(name.endswith("slow_handler") for name in slow[0]["leaf_first"][1:])
    handler = next(f for f in decoded["functions"].values() if f["name"].endswith("slow_handler"))
    assert handler["filename"].endswith("test_profiling.py") and handler["start_line"] > 0


def test_many_parked_greenlets_are_subsampled_without_bias() -> None:
    registry = ActivityRegistry()
    profiler = Profiler(hz=100, window_seconds=60, registry=registry, wall_sample=8, rng=random.Random(7))
    release = gevent.event.Event()

    def parked(route: str) -> None:
        with registry.context((("method", "GET"), ("route", route))):
            release.wait()

    glets = [gevent.spawn(parked, "/a" if i % 4 else "/b") for i in range(200)]
    gevent.sleep(0.01)
    try:
        started = time.monotonic()
        for _ in range(200):
            profiler.sample()
            time.sleep(0.01)
        elapsed = time.monotonic() - started
    finally:
        release.set()
        gevent.joinall(glets)
    total = sum(folded_lines(folded.render(profiler.profile("wall", 60))).values())
    on_b = sum(folded_lines(folded.render(profiler.profile("wall", 60, route="/b"))).values())
    # Each tick walks 8 stacks but accounts for all 200 greenlets; /b is a quarter of them.
    # Wall samples stand for elapsed time: 200 greenlets x 100 Hz x elapsed, whatever the tick timing was.
    assert 0.8 * 200 * 100 * elapsed <= total <= 1.1 * 200 * 100 * elapsed
    assert 0.15 <= on_b / total <= 0.35  # ~400 stacks walked: 0.25 +- 0.02


@pytest.mark.parametrize("clock", ["native", "thread"])
def test_plain_threads_are_profiled_by_task_and_by_thread(clock: str) -> None:
    # The main thread sits in join() (in C, GIL released) meanwhile: the native clock samples from its own thread.
    profiler = Profiler(hz=100, window_seconds=1, clock_mode=clock)
    stop = threading.Event()

    def remove_background_task() -> None:
        with task_context("remove_background"):
            stop.wait(0.6)

    def busy_untagged_thread() -> None:
        deadline = time.monotonic() + 0.6
        while time.monotonic() < deadline:
            sum(range(2000))

    threads = [threading.Thread(target=remove_background_task), threading.Thread(target=busy_untagged_thread)]
    profiler.start()
    assert profiler.clock == clock
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        profiler.stop()

    wall = profiler.profile("wall", 60)
    task_stacks = [stack for (tags, stack) in wall.samples if tags == (("task", "remove_background"),)]
    assert task_stacks and any("remove_background_task" in frame.name for frame in task_stacks[0])
    cpu = profiler.profile("cpu", 60)
    busy = [tags for (tags, stack), _ in cpu.samples.items() if any("busy_untagged" in f.name for f in stack)]
    assert busy and all(tags[0][0] == "thread" for tags in busy)
    # A thread blocked on an event uses no CPU, so the task is not in the cpu profile.
    assert not [tags for (tags, _stack) in cpu.samples if ("task", "remove_background") in tags]


def _busy_main_thread(seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sum(range(2000))


def test_the_native_clock_is_built_and_is_the_default() -> None:
    # setup.sh installs a C compiler and the Python headers for it; without the extension the profiler falls back
    # to the sampler thread, whose GIL handoffs cost a third of a saturated box's throughput (bench/results).
    profiler = Profiler(hz=100)
    profiler.start()
    try:
        assert profiler.clock == "native"
    finally:
        profiler.stop()


def test_the_native_clock_ticks_on_a_busy_main_thread_without_taking_its_gil() -> None:
    from wardrobe.ops.profiling import _ticker

    registry = ActivityRegistry()
    profiler = Profiler(hz=100, window_seconds=1, registry=registry)
    before = _ticker.stats()
    profiler.start()
    try:
        with registry.context((("method", "GET"), ("route", "/busy"))):
            _busy_main_thread(0.8)
    finally:
        profiler.stop()
    after = _ticker.stats()
    on_main, direct = after["posted"] - before["posted"], after["direct"] - before["direct"]
    # A main thread running bytecode runs its ticks itself; the clock takes the GIL only when it is stalled.
    assert on_main >= 40 and direct <= on_main / 4, (on_main, direct)
    counts = folded_lines(folded.render(profiler.profile("cpu", 60, route="/busy")))
    assert sum(c for stack, c in counts.items() if "_busy_main_thread" in stack) >= 40
    # The stacks start at the interrupted code: the tick's own frames are not in them.
    assert not any("_native_tick" in stack or "Profiler.sample" in stack for stack in counts)


def test_a_failing_native_tick_never_raises_into_the_interrupted_code(caplog) -> None:
    profiler = Profiler(hz=200)
    calls = []

    def broken(interrupted=None) -> None:
        calls.append(interrupted)
        raise RuntimeError("boom")

    profiler.sample = broken
    profiler.start()
    try:
        _busy_main_thread(0.4)  # a tick's exception escaping would surface here
    finally:
        profiler.stop()
    assert len(calls) >= 20
    assert "profiler tick failed" in caplog.text


_EXIT_WITH_PROFILER_RUNNING = """
import logging, time
logging.basicConfig(level=logging.INFO)
from wardrobe.ops.profiling.sampler import Profiler
Profiler(hz=200).start()
end = time.monotonic() + 0.3
while time.monotonic() < end:
    sum(range(1000))
"""


def test_a_process_that_exits_with_the_profiler_running_stops_it_cleanly() -> None:
    # Huey workers never call stop(). The native clock used to tick on into interpreter finalization, where a
    # tick found the modules torn down: "Exception ignored in ... _native_tick" in about a third of exits.
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", _EXIT_WITH_PROFILER_RUNNING],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    for run in runs:
        _, stderr = run.communicate(timeout=30)
        assert run.returncode == 0, stderr
        assert "profiler stopped" in stderr  # stopped at exit, before the modules go
        assert "Exception ignored" not in stderr and "Traceback" not in stderr, stderr


def test_stopping_twice_is_harmless() -> None:
    profiler = Profiler(hz=200)
    profiler.start()
    _busy_main_thread(0.1)
    profiler.stop()
    ticks = profiler.ticks
    profiler.stop()
    assert profiler.ticks == ticks and not profiler.running


def test_windows_are_bounded_in_time_and_in_distinct_stacks() -> None:
    now = [1_000.0]
    profiler = Profiler(
        hz=10, window_seconds=10, keep_minutes=1, clock=lambda: now[0], max_stacks_per_window=3
    )
    for _ in range(20):  # 200 s of fake time: only the last minute is retained
        profiler.sample()
        now[0] += 10
    assert len(profiler.store.windows_since(0)) <= 7

    window = Window(start=0, end=10, hz=10, max_stacks=3)
    for i in range(10):
        window.add("wall", (), (Frame(f"f{i}", "x.py", 1, 1),))
    assert len(window.counts) == 4  # three real stacks plus the overflow bucket
    assert window.counts[("wall", (), OVERFLOW_STACK)] == 7
    assert sum(window.counts.values()) == 10


def test_sampler_overhead_stays_small_with_many_parked_greenlets() -> None:
    registry = ActivityRegistry()
    profiler = Profiler(hz=100, window_seconds=1, registry=registry)

    def parked(i: int) -> None:
        with registry.context((("method", "GET"), ("route", f"/parked/{i % 10}"))):
            gevent.sleep(1.5)

    profiler.start()
    started = time.monotonic()
    try:
        gevent.joinall([gevent.spawn(parked, i) for i in range(200)])
    finally:
        profiler.stop()
    elapsed = time.monotonic() - started
    assert profiler.ticks >= 50
    # Walking 200 stacks 100 times a second must stay well below a core (it measures ~5-15% here).
    assert profiler.sampler_cpu_seconds < 0.5 * elapsed


# --- resources ---------------------------------------------------------------------------------------


@pytest.fixture
def profiled_app() -> Iterator[tuple[falcon.testing.TestClient, Profiler]]:
    registry = ActivityRegistry()
    profiler = Profiler(hz=100, window_seconds=1, keep_minutes=1, registry=registry)
    app = falcon.App(middleware=[ProfilingMiddleware(registry)])

    class Slow:
        def on_get(self, req, resp):
            gevent.sleep(0.4)
            resp.media = {"ok": True}

    def authorize(req) -> bool:
        return req.get_header("X-Operator") == "yes"

    app.add_route("/slow", Slow())
    app.add_route("/debug/pprof/profile", PprofResource(profiler, authorize))
    app.add_route("/debug/flamegraph", FlamegraphResource(profiler, authorize))
    client = falcon.testing.TestClient(app, headers={"X-Operator": "yes"})
    profiler.start()
    try:
        assert client.simulate_get("/slow").status_code == 200
        yield client, profiler
    finally:
        profiler.stop()


def test_folded_download_lists_the_slow_route(profiled_app) -> None:
    client, _ = profiled_app
    result = client.simulate_get(
        "/debug/pprof/profile", params={"type": "wall", "format": "folded", "route": "/slow"}
    )
    assert result.status_code == 200
    assert result.headers["content-type"].startswith("text/plain")
    stacks = folded_lines(result.text)
    assert any(stack.endswith("Slow.on_get;gevent.hub.sleep") for stack in stacks)
    assert all(";" in stack or stack for stack in stacks)

    other = client.simulate_get(
        "/debug/pprof/profile", params={"type": "wall", "format": "folded", "route": "/x"}
    )
    assert other.status_code == 200 and other.text == ""


def test_pprof_download_is_gzipped_profile(profiled_app) -> None:
    client, _ = profiled_app
    result = client.simulate_get("/debug/pprof/profile", params={"type": "wall", "seconds": "30"})
    assert result.status_code == 200
    assert "wall.pb.gz" in result.headers["content-disposition"]
    decoded = decode_profile(result.content)
    assert {sample["labels"].get("route") for sample in decoded["samples"]} == {"/slow"}


def test_flamegraph_page_is_self_contained_and_carries_the_data(profiled_app) -> None:
    client, _ = profiled_app
    result = client.simulate_get("/debug/flamegraph", params={"type": "wall", "route": "/slow"})
    assert result.status_code == 200
    assert result.headers["content-type"].startswith("text/html")
    page = result.text
    assert "<select" in page and '"/slow"' in page
    assert "Slow.on_get" in page and "gevent.hub.sleep" in page
    assert (
        "<script src" not in page and "<link" not in page and "http://" not in page and "https://" not in page
    )
    data = json.loads(page.split("const DATA = ", 1)[1].split(";\n", 1)[0])
    assert data["routes"] == ["/slow"] and data["type"] == "wall"


@pytest.mark.parametrize(
    "params",
    [
        {"type": "heap"},
        {"seconds": "soon"},
        {"seconds": "0"},
        {"seconds": "100000"},
        {"format": "svg"},
    ],
)
def test_bad_profile_parameters_get_a_json_400(profiled_app, params) -> None:
    client, _ = profiled_app
    result = client.simulate_get("/debug/pprof/profile", params=params)
    assert result.status_code == 400
    assert result.json["title"] == "Invalid parameter"


def test_profiles_need_authorization(profiled_app) -> None:
    client, _ = profiled_app
    for path in ("/debug/pprof/profile", "/debug/flamegraph"):
        assert client.simulate_get(path, headers={"X-Operator": "no"}).status_code == 403


# --- windows shared by the processes of a box ------------------------------------------------------------


def _route_counts(profile) -> int:
    return sum(folded_lines(folded.render(profile)).values())


def test_a_profile_covers_the_windows_the_other_processes_of_the_box_shared(tmp_path: Path) -> None:
    now = [1_700_000_000.0]
    registry = ActivityRegistry()
    common = dict(hz=100, window_seconds=1, keep_minutes=1, clock=lambda: now[0], share_dir=tmp_path)
    busy = Profiler(registry=registry, wall_every=1, **common)
    idle = Profiler(registry=ActivityRegistry(), **common)
    release = gevent.event.Event()

    def parked() -> None:
        with registry.context((("method", "GET"), ("route", "/busy"))):
            release.wait()

    glet = gevent.spawn(parked)
    gevent.sleep(0.01)
    busy.shared.start()  # only the writer: the test ticks the sampler itself
    try:
        for _ in range(30):  # 3 s of fake time: three windows close
            busy.sample()
            time.sleep(0.005)
            now[0] += 0.1
    finally:
        release.set()
        glet.join()
    now[0] += 1
    busy.sample()  # closes the last window that saw /busy; the new one has nothing of it
    busy.shared.stop()
    assert busy.shared.written >= 3

    seen_by_busy = _route_counts(busy.profile("wall", 60, route="/busy"))
    seen_by_idle = idle.profile("wall", 60, route="/busy")
    assert seen_by_busy > 0
    # Every sample exactly once: the busy process does not count its own files on top of its memory.
    assert _route_counts(seen_by_idle) == seen_by_busy
    assert [source.until is None for source in seen_by_idle.sources] == [True, False]
    assert seen_by_idle.sources[1].until > now[0] - 2

    # A file half-written by a process that died, garbage, or another version: skipped, never an error.
    written = sorted(tmp_path.glob("*.window"))
    first = written[0].name.split("-")
    (tmp_path / f"{first[0]}-deadbeef-{first[2]}-{first[3]}").write_bytes(written[0].read_bytes()[:40])
    (tmp_path / f"1-junk0000-{first[2]}-{first[3]}").write_bytes(b"not a window at all")
    (tmp_path / f"2-other000-{first[2]}-{first[3]}").write_bytes(zlib.compress(b'{"version": 99}'))
    assert _route_counts(idle.profile("wall", 60, route="/busy")) == seen_by_busy
    # Counts sampled at another rate are not comparable: a process with another hz leaves them out.
    assert _route_counts(Profiler(**{**common, "hz": 50}).profile("wall", 60, route="/busy")) == 0

    # Windows older than the retained minute go, whoever wrote them (a dead worker's too).
    now[0] += 120
    idle.shared.sweep()
    assert not list(tmp_path.glob("*.window"))
    assert _route_counts(idle.profile("wall", 60, route="/busy")) == 0


def test_the_shared_directory_is_wiped_at_start(tmp_path: Path) -> None:
    directory = shared.directory_for(tmp_path, "api")
    directory.mkdir(parents=True)
    (directory / "123-abcd1234-1000-2000.window").write_bytes(b"old run")
    (directory / ".123-abcd1234-1000-2000.window.tmp").write_bytes(b"half")
    shared.wipe(directory)
    assert list(directory.iterdir()) == []


# --- Pyroscope push ----------------------------------------------------------------------------------


@pytest.fixture
def pyroscope() -> Iterator[PyroscopeServer]:
    server = PyroscopeServer().start()
    yield server
    server.stop()


def _window(route: str = "/items/{item_id}", start: float = 1_700_000_000.0) -> Window:
    window = Window(start=start, end=start + 10, hz=100)
    stack = (Frame("app.handler", "app.py", 1, 2), Frame("gevent.hub.sleep", "hub.py", 10, 12))
    window.add("wall", (("method", "GET"), ("route", route)), stack, 40)
    window.add("cpu", (("method", "GET"), ("route", route)), stack[:1], 3)
    window.add("cpu", (("thread", "1234"),), (Frame("gevent.hub.Hub.run", "hub.py", 1, 1),), 2)
    return window


def test_pusher_sends_folded_windows_with_pyroscope_parameters(pyroscope) -> None:
    pusher = PyroscopePusher(
        pyroscope.url, "wardrobe", tags={"host": "web-1", "role": "api"}, org_id="tenant-7"
    )
    pusher.start()
    try:
        assert pusher.submit(_window())
        ingests = pyroscope.wait_for(3)
    finally:
        pusher.stop()
    assert pyroscope.rejections == []
    by_name = {(i.profile_type, i.labels.get("route")): i for i in ingests}
    wall = by_name[("wall", "/items/:item_id")]
    assert wall.app == "wardrobe.wall"
    assert wall.labels == {"host": "web-1", "role": "api", "method": "GET", "route": "/items/:item_id"}
    assert wall.params["from"] == "1700000000" and wall.params["until"] == "1700000010"
    assert wall.params["format"] == "folded" and wall.params["sampleRate"] == "100"
    assert wall.params["spyName"] == "wardrobe" and wall.params["units"] == "samples"
    assert wall.params["aggregationType"] == "sum"
    assert wall.headers["x-scope-orgid"] == "tenant-7"
    assert wall.stacks == {"app.handler;gevent.hub.sleep": 40}
    # Samples outside any request are pushed without the process-local thread id.
    hub = by_name[("cpu", None)]
    assert hub.labels == {"host": "web-1", "role": "api"} and hub.stacks == {"gevent.hub.Hub.run": 2}


def test_pusher_survives_server_errors(pyroscope) -> None:
    pyroscope.status = 500
    pusher = PyroscopePusher(pyroscope.url, "wardrobe", tags={"role": "api"})
    pusher.start()
    try:
        pusher.submit(_window())
        deadline = time.monotonic() + 10
        while pusher.stats.requests_failed == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert pusher.stats.requests_failed > 0 and pusher.stats.last_error == "HTTP 500"
        pyroscope.status = None
        pusher.submit(_window(start=1_700_000_010.0))
        assert len(pyroscope.wait_for(3, timeout=15)) >= 3
    finally:
        pusher.stop()


def test_pusher_never_blocks_the_caller_on_a_hanging_server(pyroscope) -> None:
    pyroscope.hang = 3.0
    pusher = PyroscopePusher(pyroscope.url, "wardrobe", timeout=0.3, queue_size=3)
    pusher.start()
    try:
        started = time.monotonic()
        accepted = [pusher.submit(_window(start=1_700_000_000.0 + 10 * i)) for i in range(50)]
        assert time.monotonic() - started < 1.0
        assert accepted.count(False) == pusher.stats.windows_dropped >= 40
        deadline = time.monotonic() + 10
        while pusher.stats.requests_failed == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert pusher.stats.requests_failed > 0 and "timed out" in pusher.stats.last_error
    finally:
        pyroscope.hang = 0.0
        pusher.stop(timeout=1.0)


def test_fake_pyroscope_rejects_what_the_real_one_rejects(pyroscope) -> None:
    ingest = f"{pyroscope.url}/ingest"
    bad_type = requests.post(
        ingest, params={"name": "my.app", "format": "folded"}, data=b"a;b 1\n", timeout=5
    )
    assert bad_type.status_code == 400 and "unknown profile type: app" in bad_type.text
    bad_body = requests.post(
        ingest, params={"name": "my.cpu", "format": "folded"}, data=b"a;b x\n", timeout=5
    )
    assert bad_body.status_code == 422


# --- under gevent monkey-patching, as in a gunicorn gevent worker ------------------------------------

SERVER_SCRIPT = textwrap.dedent(
    """
    from gevent import monkey

    monkey.patch_all()

    import json
    import sys
    import time

    import falcon
    import gevent
    from gevent.pywsgi import WSGIServer

    from wardrobe.ops.profiling import (
        FlamegraphResource, PprofResource, Profiler, ProfilingMiddleware, PyroscopePusher, os_threads
    )

    pusher = PyroscopePusher(sys.argv[1], "wardrobe", tags={"host": "h1", "role": "api"}, timeout=0.5)
    profiler = Profiler(hz=100, window_seconds=1, on_window=[pusher.submit])

    class Slow:
        def on_get(self, req, resp):
            gevent.sleep(1.5)
            resp.media = {"ok": True}

    class Burn:
        def on_get(self, req, resp):
            deadline = time.monotonic() + 0.8
            while time.monotonic() < deadline:
                sum(range(2000))
            resp.media = {"ok": True}

    class Ping:
        def on_get(self, req, resp):
            resp.media = {"pong": True}

    class Stats:
        def on_get(self, req, resp):
            resp.media = {**vars(pusher.stats), "real_threads": len(os_threads.OWN_THREADS)}

    app = falcon.App(middleware=[ProfilingMiddleware()])
    app.add_route("/slow", Slow())
    app.add_route("/burn", Burn())
    app.add_route("/ping", Ping())
    app.add_route("/stats", Stats())
    app.add_route("/debug/pprof/profile", PprofResource(profiler, lambda req: True))
    app.add_route("/debug/flamegraph", FlamegraphResource(profiler, lambda req: True))
    server = WSGIServer(("127.0.0.1", 0), app, log=None)
    server.start()
    profiler.start()
    pusher.start()
    print(server.server_port, flush=True)
    server.serve_forever()
    """
)


@pytest.fixture
def gevent_server(tmp_path: Path, pyroscope) -> Iterator[str]:
    script = tmp_path / "gevent_server.py"
    script.write_text(SERVER_SCRIPT)
    process = subprocess.Popen(
        [sys.executable, str(script), pyroscope.url],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parent.parent,
    )
    try:
        port = process.stdout.readline().strip()
        assert port.isdigit(), "server did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_under_gevent_wall_shows_parked_requests_and_cpu_shows_burning_ones(gevent_server, pyroscope) -> None:
    def get(path: str) -> None:
        requests.get(gevent_server + path, timeout=10).raise_for_status()

    clients = [threading.Thread(target=get, args=(path,)) for path in ("/slow", "/slow", "/burn")]
    for client in clients:
        client.start()
    for client in clients:
        client.join()

    def profile(**params) -> dict[str, int]:
        result = requests.get(
            f"{gevent_server}/debug/pprof/profile", params={"format": "folded", **params}, timeout=10
        )
        result.raise_for_status()
        return folded_lines(result.text)

    slow_wall = profile(type="wall", route="/slow", seconds=60)
    assert any(stack.endswith("Slow.on_get;gevent.hub.sleep") for stack in slow_wall)
    assert sum(slow_wall.values()) >= 100  # two requests parked ~1.5 s each at 100 Hz
    burn_cpu = profile(type="cpu", route="/burn", seconds=60)
    # The hub was busy in Burn the whole time: only a real OS thread could have sampled it meanwhile.
    assert sum(count for stack, count in burn_cpu.items() if "Burn.on_get" in stack) >= 30
    slow_cpu = profile(type="cpu", route="/slow", seconds=60)
    assert sum(slow_cpu.values()) < 0.1 * sum(slow_wall.values()), "parked greenlets must not cost cpu"

    pprof_blob = requests.get(
        f"{gevent_server}/debug/pprof/profile", params={"type": "wall", "route": "/slow"}, timeout=10
    ).content
    labels = {tuple(sorted(s["labels"].items())) for s in decode_profile(pprof_blob)["samples"]}
    assert labels == {(("method", "GET"), ("route", "/slow"))}

    ingests = pyroscope.wait_for(1, timeout=15)
    slow_pushes = [i for i in pyroscope.wait_for(100, timeout=3) if i.labels.get("route") == "/slow"]
    assert ingests and slow_pushes
    assert slow_pushes[0].labels == {"host": "h1", "role": "api", "method": "GET", "route": "/slow"}


def test_under_gevent_a_hanging_pyroscope_never_delays_requests(gevent_server, pyroscope) -> None:
    pyroscope.hang = 4.0
    requests.get(gevent_server + "/slow", timeout=10).raise_for_status()  # produce samples to push
    slowest = 0.0
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        started = time.monotonic()
        requests.get(gevent_server + "/ping", timeout=5).raise_for_status()
        slowest = max(slowest, time.monotonic() - started)
        time.sleep(0.05)
    assert slowest < 0.5
    stats = requests.get(gevent_server + "/stats", timeout=5).json()
    assert stats["requests_failed"] > 0 and "timed out" in stats["last_error"]
    assert stats["real_threads"] == 2  # the sampler and the pusher


NODE_DOM_SHIM = """
class El {
  constructor(id) { this.id = id; this.children = []; this.style = {}; this.listeners = {};
                    this._text = ""; this.value = ""; this.clientWidth = 1000; }
  get textContent() { return this._text; }
  set textContent(text) { this._text = text; this.children = []; }
  appendChild(child) { if (child.selected) { this.value = child.value; } this.children.push(child); return child; }
  addEventListener(kind, fn) { this.listeners[kind] = fn; }
  set innerHTML(html) { this.children = []; this.html = html; }
}
const els = {};
global.document = {
  getElementById: (id) => (els[id] = els[id] || new El(id)),
  createElement: (tag) => new El(tag),
};
global.window = { addEventListener() {} };
"""

NODE_CHECKS = """
{
const chart = els.chart, select = els.route;
const names = () => chart.children.map((n) => n.textContent).filter(Boolean);
const report = { routes: select.children.map((o) => o.textContent), selected: select.value };
report.initial = names();
const handler = chart.children.find((n) => n.textContent.endsWith("Slow.on_get"));
handler.listeners.click();
const focused = chart.children.find((n) => n.textContent.endsWith("Slow.on_get"));
report.zoomed_width = focused.style.width;
report.ancestors_after_zoom = chart.children.filter((n) => n.className === "node ancestor").length;
chart.children.find((n) => n.textContent === "all").listeners.click();
report.ancestors_after_reset = chart.children.filter((n) => n.className === "node ancestor").length;
select.value = "";
select.listeners.change();
report.all_routes = names();
console.log(JSON.stringify(report));
}
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_flamegraph_script_renders_filters_and_zooms(profiled_app, tmp_path: Path) -> None:
    client, _ = profiled_app
    page = client.simulate_get("/debug/flamegraph", params={"type": "wall", "route": "/slow"}).text
    script = page.split("<script>", 1)[1].split("</script>", 1)[0]
    program = NODE_DOM_SHIM + script.replace('"use strict";', "", 1) + NODE_CHECKS
    (tmp_path / "page.js").write_text(program)
    result = subprocess.run(["node", str(tmp_path / "page.js")], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["routes"] == ["/slow"] and report["selected"] == "0"  # preselected from ?route=
    assert "all" in report["initial"] and any(name.endswith("Slow.on_get") for name in report["initial"])
    # The clicked frame spans the whole chart, its callers stay visible above it, dimmed, until reset.
    assert report["zoomed_width"] == "1000px"
    assert report["ancestors_after_zoom"] >= 1 and report["ancestors_after_reset"] == 0
    assert any(name.endswith("Slow.on_get") for name in report["all_routes"])
