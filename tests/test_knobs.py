"""Knobs turn user input into valid values, or fail with one line that names the fix."""

import pytest

from lablib.knobs import (
    Config,
    KnobError,
    choice,
    flag,
    integer,
    nbytes,
    parse_assignments,
    seconds,
)

MODE = choice("close.mode", "drained", ("drained", "unread"), "how")
DELAY = seconds("wire.delay", 0.0, "delay", low=0.0, high=1.0)
BODY = nbytes("client.body_bytes", 1024, "body", high=64 * 1024**2)
RETRY = flag("client.retry", False, "retry")
WRITES = integer("client.writes", 0, "writes", low=0, high=3)
KNOBS = (MODE, DELAY, BODY, RETRY, WRITES)


@pytest.mark.parametrize("text, value", [("0.25", 0.25), ("250ms", 0.25), ("250 ms", 0.25), ("1s", 1.0),
                                         ("500us", 0.0005), (0.1, 0.1), (1, 1.0)])
def test_seconds_accept_plain_numbers_and_units(text, value):
    assert DELAY.parse(text) == pytest.approx(value)


@pytest.mark.parametrize("text, value", [("8MiB", 8 * 1024**2), ("64KiB", 65536), ("1000", 1000), ("1k", 1000),
                                         (2048, 2048)])
def test_bytes_accept_units(text, value):
    assert BODY.parse(text) == value


@pytest.mark.parametrize("knob, bad, words", [
    (DELAY, "-1", ["wire.delay", "out of range", "between 0s and 1s"]),
    (DELAY, "abc", ["wire.delay", "not a number", "250ms"]),
    (DELAY, "nan", ["wire.delay", "not a number"]),
    (DELAY, float("inf"), ["wire.delay", "finite"]),
    (DELAY, True, ["wire.delay", "must be a number"]),
    (BODY, "1.5", ["client.body_bytes", "whole number"]),
    (BODY, "65MiB", ["client.body_bytes", "between 0 and 64MiB"]),
    (MODE, "foo", ["close.mode", "drained, unread"]),
    (RETRY, "maybe", ["client.retry", "on or off"]),
    (WRITES, 9, ["client.writes", "between 0 and 3"]),
])
def test_bad_values_fail_with_one_line_naming_the_knob_and_the_valid_range(knob, bad, words):
    with pytest.raises(KnobError) as err:
        knob.parse(bad)
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_booleans_accept_on_off_words():
    assert RETRY.parse("on") is True and RETRY.parse("off") is False and RETRY.parse("1") is True


def test_config_fills_defaults_and_validates():
    cfg = Config(KNOBS, {"close.mode": "unread", "wire.delay": "5ms"}, owner="demo")
    assert cfg["close.mode"] == "unread" and cfg["wire.delay"] == 0.005 and cfg["client.body_bytes"] == 1024
    assert cfg.changed() == {"close.mode": "unread", "wire.delay": 0.005}
    assert cfg.formatted()["wire.delay"] == "5ms"
    assert cfg.replace(**{"close.mode": "drained"}).changed() == {"wire.delay": 0.005}


def test_unknown_knob_suggests_the_closest_and_lists_all():
    with pytest.raises(KnobError) as err:
        Config(KNOBS, {"close.mod": "unread"}, owner="demo")
    message = str(err.value)
    assert "unknown knob 'close.mod' for demo" in message and "did you mean close.mode?" in message
    assert "wire.delay" in message and "\n" not in message


def test_a_knob_with_an_invalid_default_is_a_programming_error():
    with pytest.raises(KnobError):
        seconds("x.y", -1.0, "bad default")


def test_assignments_need_an_equals_sign():
    assert parse_assignments(["a.b=1", "c = on"]) == {"a.b": "1", "c": " on"}  # values are stripped on parse
    with pytest.raises(KnobError, match="expected KNOB=VALUE"):
        parse_assignments(["close.mode"])
