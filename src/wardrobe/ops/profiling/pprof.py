"""A `Profile` as gzipped pprof profile.proto, written by hand so no protobuf runtime is needed.

Field numbers follow google/pprof's profile.proto. What `go tool pprof` insists on, and this encoder keeps:
`string_table[0]` is ""; every sample has one value per sample type; ids are nonzero and unique and every one
referenced resolves; every string index is in range. CPU profiles carry `[samples/count, cpu/nanoseconds]` with
period type cpu/nanoseconds and period 1e9/rate; wall profiles use wall/nanoseconds.
"""

from __future__ import annotations

import gzip

from wardrobe.ops.profiling.aggregation import Frame, Profile


def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _key(field_number: int, wire_type: int) -> bytes:
    return _varint(field_number << 3 | wire_type)


def _int_field(field_number: int, value: int) -> bytes:
    # proto3 leaves zero scalars out; readers treat absence as zero.
    return _key(field_number, 0) + _varint(value) if value else b""


def _bytes_field(field_number: int, payload: bytes) -> bytes:
    return _key(field_number, 2) + _varint(len(payload)) + payload


def _packed(field_number: int, values: list[int]) -> bytes:
    return _bytes_field(field_number, b"".join(_varint(v) for v in values)) if values else b""


class _Strings:
    def __init__(self) -> None:
        self.table: list[str] = [""]
        self._index: dict[str, int] = {"": 0}

    def __call__(self, value: str) -> int:
        index = self._index.get(value)
        if index is None:
            index = self._index[value] = len(self.table)
            self.table.append(value)
        return index


def encode(profile: Profile) -> bytes:
    """Serialize to an uncompressed profile.proto message."""
    strings = _Strings()
    unit_type = profile.profile_type  # "cpu" or "wall"
    sample_types = [(strings("samples"), strings("count")), (strings(unit_type), strings("nanoseconds"))]
    period = profile.period_nanos

    functions: dict[tuple[str, str, int], int] = {}
    locations: dict[tuple[int, int], int] = {}
    out = bytearray()
    for type_index, unit_index in sample_types:
        out += _bytes_field(1, _int_field(1, type_index) + _int_field(2, unit_index))

    def location_id(frame: Frame) -> int:
        function_key = (frame.name, frame.filename, frame.start_line)
        function_id = functions.get(function_key)
        if function_id is None:
            function_id = functions[function_key] = len(functions) + 1
        location_key = (function_id, frame.line)
        found = locations.get(location_key)
        if found is None:
            found = locations[location_key] = len(locations) + 1
        return found

    static = profile.static_tags
    for (tags, stack), count in sorted(profile.samples.items(), key=lambda item: -item[1]):
        location_ids = [location_id(frame) for frame in reversed(stack)]  # leaf first
        labels = b"".join(
            _bytes_field(3, _int_field(1, strings(key)) + _int_field(2, strings(value)))
            for key, value in (*tags, *static)
        )
        body = _packed(1, location_ids) + _packed(2, [count, count * period]) + labels
        out += _bytes_field(2, body)

    # One synthetic mapping that claims symbols are present, so pprof never tries to symbolize addresses.
    out += _bytes_field(3, _int_field(1, 1) + _int_field(5, strings("python")) + _int_field(7, 1))
    for (function_id, line), loc_id in locations.items():
        line_message = _int_field(1, function_id) + _int_field(2, line)
        out += _bytes_field(4, _int_field(1, loc_id) + _int_field(2, 1) + _bytes_field(4, line_message))
    for (name, filename, start_line), function_id in functions.items():
        name_index = strings(name)
        body = (
            _int_field(1, function_id)
            + _int_field(2, name_index)
            + _int_field(3, name_index)
            + _int_field(4, strings(filename))
            + _int_field(5, start_line)
        )
        out += _bytes_field(5, body)
    period_type = _int_field(1, strings(unit_type)) + _int_field(2, strings("nanoseconds"))
    default_type = strings(unit_type)
    for value in strings.table:
        out += _bytes_field(6, value.encode("utf-8"))
    out += _int_field(9, int(profile.start * 1e9))
    out += _int_field(10, max(int((profile.end - profile.start) * 1e9), 0))
    out += _bytes_field(11, period_type)
    out += _int_field(12, period)
    out += _int_field(14, default_type)
    return bytes(out)


def encode_gzip(profile: Profile) -> bytes:
    return gzip.compress(encode(profile), compresslevel=6, mtime=0)
