"""Records: safe field conversion, and the strict canonical line check."""

from __future__ import annotations

import json
import random

import pytest
import rfc8785

from jail.audit.record import LineError, check_line, decode_arg, encode, run_record

try:
    from .test_audit_support import result
except ImportError:
    from test_audit_support import result


def test_run_record_converts_times_and_argv():
    rec = run_record(result(1, seccomp={"syscall": "ptrace", "nr": 101, "args": [2**64 - 1, 0, 7]},
                            cgroup="/sys/fs/cgroup/hivejail/run-1"))
    assert rec["started_at_us"] == 1732770540123456
    assert rec["usage"]["wall_us"] == 251000 and rec["usage"]["cpu_sys_us"] == 62500
    assert not any(isinstance(v, float) for v in rec["usage"].values())
    argv = rec["argv"]
    assert argv[3] == "caf\u00e9" and isinstance(argv[4], dict)
    assert decode_arg(argv[4]) == b"raw\xff\xfebytes"
    assert rec["seccomp"]["args"][0] == str(2**64 - 1)  # beyond I-JSON: kept exactly as text
    assert rec["extra"] == {"cgroup": "/sys/fs/cgroup/hivejail/run-1"}
    line = encode(dict(rec, seq=0, origin="o", logged_at_us=1))
    assert check_line(line)["argv"] == argv


def test_run_record_odd_inputs():
    rec = run_record({"status": "setup_error", "reason": "mount failed: bad\udcffname \x1b[2J", "command": None,
                      "wall_s": float("nan"), "started_at": "not a time", "alerts": None, "exit_code": None,
                      "seq": 99, "origin": "forged"})
    line = encode(dict(rec, seq=0, origin="o", logged_at_us=1))
    obj = check_line(line)
    assert obj["argv"] == [] and obj["usage"]["wall_us"] is None and obj["started_at_raw"] == "not a time"
    assert obj["reason"] == "mount failed: bad\\xffname \x1b[2J"
    assert "seq" not in rec and "origin" not in rec
    with pytest.raises(TypeError):
        run_record(["not", "a", "dict"])  # type: ignore[arg-type]


def _random_value(rnd: random.Random, depth: int = 0):
    kind = rnd.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rnd.choice([True, False])
    if kind == 2:
        return rnd.randrange(-2**53 + 1, 2**53)
    if kind == 3:
        return rnd.choice([0.5, -1.25, 1e-7, 123456.789, 1e21, 5e-324, 0.1])
    if kind in (4, 5):
        alphabet = "az09 \"\\/\n\t\x00\x1f\x7f\u00e9\u2028\ue000\U0001f600"
        return "".join(rnd.choice(alphabet) for _ in range(rnd.randrange(6)))
    if kind in (6, 7):
        keys = ["a", "b", "\u00e9", "\ue000", "\U0001f600", "A", "10", "1"]
        return {rnd.choice(keys): _random_value(rnd, depth + 1) for _ in range(rnd.randrange(4))}
    return [_random_value(rnd, depth + 1) for _ in range(rnd.randrange(4))]


def test_fast_path_agrees_with_rfc8785():
    """check_line accepts exactly rfc8785.dumps output, for floats, non-BMP keys, controls..."""
    rnd = random.Random(7)
    for _ in range(2000):
        obj = {"k": _random_value(rnd), "x": _random_value(rnd)}
        line = rfc8785.dumps(obj)
        assert check_line(line) == json.loads(line)
        alt = json.dumps(obj, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()
        if alt != line:  # Python's form differs (floats, key order): must be refused
            with pytest.raises(LineError):
                check_line(alt)


@pytest.mark.parametrize("line,why", [
    (b'{"a":1,"a":1}', "duplicate key"),
    (b'{"b":1,"a":2}', "canonical"),
    (b'{"a": 1}', "canonical"),
    (b'{"a":1.0}', "canonical"),
    (b'{"a":1E+2}', "canonical"),
    (b'{"a":-0}', "canonical"),
    (b'{"a":"\\u00e9"}', "canonical"),
    (b'{"a":"\\/"}', "canonical"),
    (b'{"a":"\\ud800"}', "canonicalisable"),
    (b'{"a":NaN}', "not JSON"),
    (b'{"a":1}\r', "canonical"),
    (b'["a"]', "not a JSON object"),
    (b'{"a":"\xff"}', "UTF-8"),
    (b'{"a":9007199254740993}', "canonical"),
    (b'{"a":{"c":1,"b":2}}', "canonical"),
    (b'{"a":1', "not JSON"),
])
def test_check_line_refuses(line, why):
    with pytest.raises(LineError, match=why):
        check_line(line)


def test_large_integers_take_the_exact_path():
    """16-digit microsecond times stay on the fast path; integers beyond
    2**53-1 are not I-JSON and are refused, even inside arrays or negative."""
    assert check_line(b'{"a":1795843144508315}') == {"a": 1795843144508315}
    assert check_line(b'{"a":[9007199254740991,-9007199254740991]}')["a"][0] == 2**53 - 1
    assert check_line(b'{"a":"x:99999999999999999"}')  # digits inside a string are just text
    for bad in (b'{"a":9007199254740992}', b'{"a":[1,-99999999999999999]}', b'{"a":12345678901234567890}'):
        with pytest.raises(LineError):
            check_line(bad)
