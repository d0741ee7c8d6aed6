"""Captured packets agree with what lablib infers from calls and with the kernel's counters.

The reference runs in data/ were captured on a machine that allows it, so these checks run
everywhere; where this machine can capture too, the same checks run on a live capture.
"""

import pytest

import lablib
from lablib import reference
from lablib.capture import probe
from lablib.ladder import infer_segments, observed_segments

LIVE = probe()
MODES = ["drained", "unread", "shutdown", "linger0"]


def check_agreement(result):
    """Captured RSTs = the kernel's OutRsts (per trial when trials ran one at a time, else in
    total); every inferred FIN/RST was on the wire."""
    per_trial = "OutRsts" in result.trials
    captured_rsts = 0
    for trial in result.trials["trial"]:
        events = result.trace.events(trial)
        observed = observed_segments(events, result.packets)
        captured = sum(s.kind == "RST" for s in observed)
        captured_rsts += captured
        if per_trial:
            assert captured == result.trials.set_index("trial").loc[trial, "OutRsts"], (trial, observed)
        for inferred in infer_segments(events):
            if inferred.kind in ("FIN", "RST"):
                match = [o for o in observed if (o.kind, o.src, o.dst, o.conn) ==
                         (inferred.kind, inferred.src, inferred.dst, inferred.conn)]
                assert match, f"trial {trial}: inferred {inferred} was not captured"
                assert inferred.t_sent_ns <= match[0].t_sent_ns <= (inferred.t_seen_ns or match[0].t_sent_ns)
    assert captured_rsts == result.kernel["OutRsts"]


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


def sequence_holes(packets):
    """Gaps in the captured byte stream of each direction: a hole is a lost packet (a reset
    connection's unsent data never goes out at all, so that is not a hole)."""
    holes = []
    for (sport, dport), rows in packets.groupby(["sport", "dport"]):
        syn = rows[rows["flags"].str.contains("S")]
        if syn.empty:
            continue
        first = int(syn["seq"].iloc[0]) + 1
        covered = 0
        for start, length in sorted(((int(r.seq) - first) % 2**32, int(r.nbytes))
                                    for r in rows.itertuples() if r.nbytes > 0):
            if start > covered:
                holes.append((sport, dport, covered, start))
            covered = max(covered, start + length)
    return holes


@pytest.mark.skipif(not LIVE, reason=f"capture {LIVE.reason}")
@pytest.mark.parametrize("knobs", [{}, {"server.close_mode": "lingering"}, {"topology": "proxy"}], ids=str)
def test_live_capture_keeps_up_with_an_8_mib_upload(knobs):
    result = lablib.run("early-close", 3, knobs, capture=True)
    check_agreement(result)
    assert sequence_holes(result.packets) == []


@pytest.mark.parametrize("name", [n for n in reference.names() if n.startswith("early-close/")])
def test_reference_captures_of_uploads_have_no_holes(name):
    assert sequence_holes(reference.load(name).packets) == []
