"""Captured packets agree with what lablib infers from calls and with the kernel's counters.

The reference runs in data/ were captured on a machine that allows it, so these checks run
everywhere; where this machine can capture too, the same checks run on a live capture.
"""

import pytest

import lablib
from lablib import reference
from lablib.capture import CaptureError, probe
from lablib.cli import main
from lablib.ladder import infer_segments, observed_segments

LIVE = probe()
MODES = ["drained", "unread", "shutdown", "linger0"]


def check_agreement(result):
    """Per trial: captured RSTs = the kernel's OutRsts; every inferred FIN/RST was on the wire."""
    for trial in result.trials["trial"]:
        events = result.trace.events(trial)
        observed = observed_segments(events, result.packets)
        row = result.trials.set_index("trial").loc[trial]
        assert sum(s.kind == "RST" for s in observed) == row["OutRsts"], (trial, observed)
        for inferred in infer_segments(events):
            if inferred.kind in ("FIN", "RST"):
                match = [o for o in observed if (o.kind, o.src, o.dst, o.conn) ==
                         (inferred.kind, inferred.src, inferred.dst, inferred.conn)]
                assert match, f"trial {trial}: inferred {inferred} was not captured"
                assert inferred.t_sent_ns <= match[0].t_sent_ns <= (inferred.t_seen_ns or match[0].t_sent_ns)


@pytest.mark.parametrize("name", reference.names())
def test_reference_runs_agree_with_their_capture(name):
    result = reference.load(name)
    assert result.packets is not None and len(result.packets) > 0
    assert reference.pcap(name).read_bytes()[:4] in (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4")
    check_agreement(result)


def test_every_close_basics_mode_has_a_reference_run():
    assert {f"close-basics/{m}" for m in MODES} <= set(reference.names())
    with pytest.raises(FileNotFoundError, match="no reference run 'close-basics/nope'"):
        reference.load("close-basics/nope")


@pytest.mark.skipif(not LIVE, reason=f"capture {LIVE.reason}")
@pytest.mark.parametrize("knobs", [{"close.mode": m} for m in MODES] +
                         [{"close.mode": "drained", "client.writes_after_end": 2},
                          {"close.mode": "unread", "wire.delay": 0.005}], ids=str)
def test_live_capture_agrees_with_inference_and_counters(knobs):
    check_agreement(lablib.run("close-basics", 5, knobs, capture=True))


def test_asking_for_capture_where_it_is_impossible_fails_in_one_line(monkeypatch, capsys):
    from lablib import capture, runner

    denied = capture.CaptureSupport(False, "not available: no CAP_NET_RAW (uid 1000, no_new_privs set); ...")
    monkeypatch.setattr(runner, "probe", lambda: denied)
    with pytest.raises(CaptureError, match="no CAP_NET_RAW"):
        lablib.run("close-basics", 1, capture=True)
    with pytest.raises(SystemExit) as exit_:
        main(["run", "close-basics", "--capture"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no CAP_NET_RAW" in err


def test_pcap_needs_capture(capsys):
    with pytest.raises(SystemExit):
        main(["run", "close-basics", "--pcap", "x.pcap"])
    assert "--pcap needs --capture" in capsys.readouterr().err
