"""The ladder model infers segments from calls; every inferred arrow points forward in time."""

import pytest

import lablib
from lablib.ladder import infer_segments, lane_order, marks, merge_data
from lablib.plot import ladder, ladders, outcome_bars, sweep
from lablib.trace import Event

C, S = "client", "server"
CONN = "50000>40000"


def ev(t, actor, op, **kw):
    return Event(t, actor, op, conn=CONN, **kw)


HANDSHAKE = [ev(0, C, "connect"), ev(5, S, "accept")]


def kinds(segments):
    return [(s.kind, s.src, s.dst) for s in segments]


def test_a_close_with_unread_bytes_is_an_rst_that_arrives_at_the_peers_error():
    events = HANDSHAKE + [
        ev(10, C, "send", nbytes=1000),
        ev(20, S, "send", nbytes=100),
        ev(30, S, "close", unread=1000, wire="RST"),
        ev(40, C, "recv", nbytes=100),
        ev(50, C, "recv", result="ECONNRESET"),
    ]
    segs = infer_segments(events)
    assert kinds(segs) == [("handshake", C, S), ("data", C, S), ("data", S, C), ("RST", S, C)]
    request, reply, rst = segs[1], segs[2], segs[3]
    assert request.t_seen_ns is None and "not read" in request.label
    assert reply.t_seen_ns == 40
    assert rst.t_sent_ns == 30 and rst.t_seen_ns == 50 and rst.cause == "close() with 1000 B unread"
    assert all(s.inferred for s in segs)


def test_a_fin_arrives_at_the_peers_eof():
    events = HANDSHAKE + [ev(10, S, "shutdown", wire="FIN"), ev(20, C, "recv", result="eof")]
    fin = [s for s in infer_segments(events) if s.kind == "FIN"]
    assert len(fin) == 1 and (fin[0].t_sent_ns, fin[0].t_seen_ns) == (10, 20)
    assert fin[0].cause == "shutdown(SHUT_WR)"


def test_a_write_to_a_closed_peer_gets_an_rst_from_its_kernel():
    events = HANDSHAKE + [
        ev(10, S, "close", unread=0, wire="FIN"),
        ev(20, C, "recv", result="eof"),
        ev(30, C, "send", nbytes=16),
        ev(40, C, "send", result="EPIPE"),
    ]
    rst = [s for s in infer_segments(events) if s.kind == "RST"]
    assert len(rst) == 1 and rst[0].src == S and (rst[0].t_sent_ns, rst[0].t_seen_ns) == (30, 40)
    assert rst[0].cause == "server's kernel: data for a closed socket" and "kernel" in rst[0].label


def test_many_sends_merge_into_one_arrow_and_one_mark():
    events = HANDSHAKE + [ev(10 + i, C, "send", nbytes=1000) for i in range(10)] + [
        ev(100, S, "recv", nbytes=10000)]
    segs = merge_data(infer_segments(events))
    data = [s for s in segs if s.kind == "data"]
    assert len(data) == 1 and data[0].nbytes == 10000 and data[0].label == "10 sends, 10000 B"
    texts = [m.text for m in marks(events) if m.actor == C]
    assert "send() x10, 10000 B" in texts


def test_lanes_run_from_client_through_hops_to_server():
    events = [Event(0, "server", "listen"), Event(1, "wire", "listen"), Event(2, "client", "connect")]
    assert lane_order(events) == ["client", "wire", "server"]


@pytest.mark.parametrize("mode", ["drained", "unread", "shutdown", "linger0"])
def test_in_a_real_run_every_arrow_points_forward_and_the_ends_are_right(mode):
    result = lablib.run("close-basics", 10, {"close.mode": mode, "client.writes_after_end": 1})
    expected_end = {"drained": "FIN", "shutdown": "FIN", "unread": "RST", "linger0": "RST"}[mode]
    for trial in range(10):
        segs = infer_segments(result.trace.events(trial))
        assert all(s.t_seen_ns is None or s.t_seen_ns >= s.t_sent_ns for s in segs), segs
        ends = [s for s in segs if s.kind in ("FIN", "RST") and s.src == "server"]
        assert ends[0].kind == expected_end
        assert ends[0].t_seen_ns is not None  # the client's recv proves its arrival


def test_pictures_draw_from_a_real_run():
    result = lablib.run("close-basics", 3, {"close.mode": "unread", "wire.delay": 0.005})
    fig = result.ladder(1)
    assert fig.axes and "trial 1" in fig.axes[0].get_title()
    assert ladder(result.trace.events(0), scale="time").axes
    bars = outcome_bars({"unread": result, "again": result})
    assert [t.get_text() for t in bars.axes[0].get_xticklabels()] == ["unread", "again"]
    grid = ladders({"first": result, "second": result}, trial=2)
    assert [ax.get_title() for ax in grid.axes] == ["first", "second"]
    with pytest.raises(ValueError, match="no events"):
        ladder([])
    with pytest.raises(ValueError, match="scale"):
        ladder(result.trace.events(0), scale="log")


def test_curves_that_lie_on_each_other_stay_apart_by_shape_and_the_scale_can_stop_short():
    zero = [0.0, 0.0, 0.0]
    fig = sweep([1, 2, 3], {"idle timeout": zero, "retries": zero}, xlabel="rate", shapes=True, y_max=0.2)
    first, second = fig.axes[0].get_lines()[:2]
    assert first.get_marker() != second.get_marker() and first.get_linewidth() > second.get_linewidth()
    assert fig.axes[0].get_ylim()[1] == pytest.approx(0.206)
    assert fig.axes[0].yaxis.get_major_formatter()(0.025, 0) == "2.5%"


def test_figures_display_as_png_in_a_notebook_without_pyplot():
    from IPython.core.formatters import DisplayFormatter

    result = lablib.run("close-basics", 1)
    data, _ = DisplayFormatter().format(result.ladder())
    assert data["image/png"][:4] == b"\x89PNG"
    data, _ = DisplayFormatter().format(outcome_bars(result))
    assert data["image/png"][:4] == b"\x89PNG"
