"""Audit records: building them from a run's result, encoding, and strict reading.

A record is one RFC 8785 (JCS) canonical JSON object per line.  Canonical form
matters because the Merkle leaf is the stored bytes: a verifier must be able
to say "these bytes are the only encoding of this record", so re-encoding,
reordering keys or duplicating a key is tamper, not formatting.

Result fields are kept, with three changes so every value is exact:
  * times are integer microseconds (`started_at_us`, `usage.wall_us`,
    `usage.cpu_user_us`, `usage.cpu_sys_us`): floats would make the
    canonical form depend on float printing;
  * argv items that are not valid UTF-8 (surrogateescape'd bytes) become
    {"b64": "<base64 of the raw bytes>"}, so the exact bytes survive;
  * integers outside I-JSON's +-(2**53-1) (e.g. seccomp pointer arguments)
    become decimal strings, other text with lone surrogates is escaped.
Unknown result fields go under "extra" so they can never shadow ours.
"""

from __future__ import annotations

import base64
import json
import math
from datetime import datetime, timedelta, timezone
from typing import Any

RECORD_VERSION = 1
MAX_SAFE_INT = 2**53 - 1
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_USAGE_INT = ("memory_peak_bytes", "io_read_bytes", "io_write_bytes", "pids_peak")
_USAGE_TIME = (("wall_s", "wall_us"), ("cpu_user_s", "cpu_user_us"), ("cpu_sys_s", "cpu_sys_us"))
_TOP = ("status", "exit_code", "signal", "reason", "script_sha256", "policy_sha256")


class LineError(ValueError):
    """A stored line is not a canonical JSON object."""


def _text(s: str) -> str:
    """Text that UTF-8 can hold: surrogateescape'd bytes become \\xNN escapes."""
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        raw = s.encode("utf-8", "surrogateescape") if _only_escapes(s) else s.encode("utf-8", "backslashreplace")
        return raw.decode("utf-8", "backslashreplace")


def _only_escapes(s: str) -> bool:
    return all(not 0xD800 <= ord(c) <= 0xDFFF or 0xDC80 <= ord(c) <= 0xDCFF for c in s)


def clean(value: Any, depth: int = 0) -> Any:
    """A JSON value that RFC 8785 accepts, as close to `value` as possible."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if -MAX_SAFE_INT <= value <= MAX_SAFE_INT else str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value.is_integer() and abs(value) <= MAX_SAFE_INT:
            return int(value)
        return value
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return {"b64": base64.b64encode(raw).decode()}
    if depth > 32:
        return _text(repr(value))
    if isinstance(value, dict):
        return {_text(str(k)): clean(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v, depth + 1) for v in value]
    return _text(str(value))


def encode_arg(arg: Any) -> str | dict:
    """One argv item: the string if it is valid UTF-8, else {"b64": raw bytes}."""
    if isinstance(arg, (bytes, bytearray)):
        raw = bytes(arg)
    else:
        s = arg if isinstance(arg, str) else str(arg)
        try:
            s.encode("utf-8")
            return s
        except UnicodeEncodeError:
            try:
                raw = s.encode("utf-8", "surrogateescape")
            except UnicodeEncodeError:
                raw = s.encode("utf-8", "surrogatepass")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(raw).decode()}


def decode_arg(item: Any) -> bytes:
    """Raw bytes of an argv item written by encode_arg."""
    if isinstance(item, dict) and isinstance(item.get("b64"), str):
        return base64.b64decode(item["b64"])
    return str(item).encode("utf-8")


def seconds_to_us(x: Any) -> int | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return None
    return round(x * 1_000_000)


def rfc3339_to_us(s: Any) -> int | None:
    """Microseconds since the epoch; naive times are taken as UTC."""
    if not isinstance(s, str):
        return None
    try:
        dt = datetime.fromisoformat(s.strip().replace("z", "Z"))
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return (dt - _EPOCH) // timedelta(microseconds=1)


def us_to_rfc3339(us: int | None) -> str:
    if not isinstance(us, int) or isinstance(us, bool):
        return "-"
    return (_EPOCH + timedelta(microseconds=us)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def run_record(result: dict) -> dict:
    """The body of a run record from a result record (seq/origin/time added at append)."""
    if not isinstance(result, dict):
        raise TypeError(f"audit record must be a dict, not {type(result).__name__}")
    r = dict(result)
    rec: dict[str, Any] = {"v": RECORD_VERSION, "type": "run"}
    rec["id"] = clean(r.pop("id", None))
    started = r.pop("started_at", None)
    rec["started_at_us"] = rfc3339_to_us(started)
    if rec["started_at_us"] is None and started is not None:
        rec["started_at_raw"] = clean(started)
    for k in _TOP:
        rec[k] = clean(r.pop(k, None))
    usage: dict[str, Any] = {}
    for src, dst in _USAGE_TIME:
        v = r.pop(src, None)
        usage[dst] = seconds_to_us(v)
        if usage[dst] is None and v is not None:
            usage[dst + "_raw"] = clean(v)
    for k in _USAGE_INT:
        usage[k] = clean(r.pop(k, None))
    rec["usage"] = usage
    rec["seccomp"] = clean(r.pop("seccomp", None))
    alerts = r.pop("alerts", None)
    rec["alerts"] = clean(alerts) if alerts is not None else []
    cmd = r.pop("command", None)
    if isinstance(cmd, (list, tuple)):
        rec["argv"] = [encode_arg(a) for a in cmd]
    else:
        rec["argv"] = [] if cmd is None else [encode_arg(cmd)]
    for k in ("seq", "origin", "logged_at_us", "v", "type"):
        r.pop(k, None)  # ours to set
    if r:
        rec["extra"] = clean(r)
    return rec


def encode(record: dict) -> bytes:
    """RFC 8785 canonical bytes of `record` (no newline)."""
    import rfc8785  # lazy: keep `import jail.audit` cheap

    return rfc8785.dumps(record)


class _Slow(Exception):
    """A float or a large integer: compare with the rfc8785 package instead."""


def _float_hook(s: str) -> float:
    raise _Slow


_RUNS = bytes(ord("D") if 48 <= i <= 57 else ord(" ") for i in range(256))
_RUN16 = b"D" * 16


def _may_exceed_safe_int(line: bytes) -> bool:
    """Does a number token with 16+ digits that may exceed 2**53-1 occur?
    (Microsecond times have 16 digits but start with 1: they stay fast.)"""
    m = line.translate(_RUNS)
    pos = m.find(_RUN16)
    while pos >= 0:
        end = pos + 16
        while end < len(m) and m[end] == 68:
            end += 1
        before = line[pos - 2:pos - 1] if line[pos - 1:pos] == b"-" else line[pos - 1:pos]
        if before in (b":", b",", b"[") and (end - pos > 16 or line[pos] == 57):
            return True
        pos = m.find(_RUN16, end)
    return False


def _no_constant(s: str) -> Any:
    raise LineError(f"{s} is not JSON")


_FAST = json.JSONDecoder(parse_float=_float_hook, parse_constant=_no_constant)
_PLAIN = json.JSONDecoder(parse_constant=_no_constant)
_ENCODER = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _key_order_may_differ(line: bytes) -> bool:
    """UTF-16 and code point order differ only between a non-BMP character
    (UTF-8 lead byte F0-F4) and one in U+E000..U+FFFF (lead byte EE/EF)."""
    return (not line.isascii() and any(b in line for b in (b"\xf0", b"\xf1", b"\xf2", b"\xf3", b"\xf4"))
            and (b"\xee" in line or b"\xef" in line))


def check_line(line: bytes) -> dict:
    """Parse a stored line strictly: UTF-8, one JSON object, no duplicate keys,
    and byte-identical to its RFC 8785 encoding.  Raises LineError.

    Fast path (C speed): when the line has no float, no integer beyond
    2**53-1 and cannot hold keys whose UTF-16 order differs from code point
    order, Python's sorted, compact, non-ASCII json encoding is exactly
    RFC 8785, so the line must equal it.  Otherwise compare with the rfc8785
    package.  A duplicate key never survives the round trip (json keeps the
    last value), so it shows up as a mismatch, which is then diagnosed.
    """
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise LineError(f"not valid UTF-8 at byte {e.start}") from None
    try:
        try:
            obj, slow = _FAST.decode(text), False
        except _Slow:
            obj, slow = _PLAIN.decode(text), True
    except json.JSONDecodeError as e:
        raise LineError(f"not JSON: {e.msg} at column {e.colno}") from None
    except RecursionError:
        raise LineError("JSON nested too deeply") from None
    if not isinstance(obj, dict):
        raise LineError("not a JSON object")
    try:
        if slow or _may_exceed_safe_int(line) or _key_order_may_differ(line):
            canon = encode(obj)
        else:
            canon = _ENCODER.encode(obj).encode("utf-8")
    except (UnicodeEncodeError, ValueError, TypeError) as e:  # lone surrogates, out-of-domain numbers
        raise LineError(f"not canonicalisable: {e}") from None
    if canon != line:
        _find_duplicate_key(text)
        raise LineError("not RFC 8785 canonical JSON (re-encoded, reordered or reformatted)")
    return obj


def _find_duplicate_key(text: str) -> None:
    def pairs(items: list) -> dict:
        d: dict = {}
        for k, v in items:
            if k in d:
                raise LineError(f"duplicate key {k!r}")
            d[k] = v
        return d

    try:
        json.loads(text, object_pairs_hook=pairs)
    except (json.JSONDecodeError, RecursionError):
        pass
