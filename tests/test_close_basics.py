"""Lab 00: each way of ending a connection, what goes on the wire and what the peer sees.

Theory makes every outcome here certain on Linux, so the assertions are exact: a close with
unread bytes always sends RST, a drained close always FIN.
"""

import pytest

import lablib
from lablib.scenarios.close_basics import check_prediction

N = 30


def run(mode, **knobs):
    return lablib.run("close-basics", N, {"close.mode": mode, **knobs})


@pytest.mark.parametrize("mode, counter", [("unread", "TCPAbortOnClose"), ("linger0", "TCPAbortOnData")])
def test_unread_and_linger0_send_an_rst_every_trial_and_the_peer_sees_econnreset(mode, counter):
    result = run(mode)
    assert result.outcomes == {"eof": 0, "econnreset": N, "epipe": 0}
    assert result.kernel["OutRsts"] >= N and result.kernel[counter] >= N
    assert (result.trials["OutRsts"] >= 1).all()  # per trial, not just in total
    assert set(result.trials["server_sent"]) == {"RST"}
    assert set(result.trials["client_state"]) == {"CLOSE"} and set(result.trials["server_state"]) == {"GONE"}


@pytest.mark.parametrize("mode", ["drained", "shutdown"])
def test_drained_and_shutdown_send_a_fin_and_the_peer_sees_eof(mode):
    result = run(mode)
    assert result.outcomes == {"eof": N, "econnreset": 0, "epipe": 0}
    assert result.kernel["TCPAbortOnClose"] == 0 and result.kernel["TCPAbortOnData"] == 0
    assert (result.trials["OutRsts"] == 0).all()
    assert set(result.trials["server_sent"]) == {"FIN"}
    assert set(result.trials["client_state"]) == {"CLOSE_WAIT"}
    assert set(result.trials["server_state"]) <= {"FIN_WAIT1", "FIN_WAIT2"}


def test_linux_keeps_bytes_that_arrived_before_the_rst_readable():
    result = run("unread", **{"server.reply_bytes": 777})
    assert (result.trials["bytes_before_end"] == 777).all()
    assert (result.trials["server_unread"] == 1000).all()


def test_close_with_nothing_unread_is_a_fin_even_in_unread_mode():
    result = run("unread", **{"client.request_bytes": 0})
    assert result.outcomes["eof"] == N and result.kernel["TCPAbortOnClose"] == 0


def test_writing_after_a_fin_succeeds_once_then_the_closed_side_answers_rst():
    result = run("drained", **{"client.writes_after_end": 2})
    assert result.outcomes["epipe"] == N
    assert set(result.trials["writes"]) == {"ok EPIPE"}
    assert (result.trials["OutRsts"] == 1).all() and result.kernel["TCPAbortOnData"] >= N


def test_a_half_closed_server_still_reads_what_the_peer_writes():
    result = run("shutdown", **{"client.writes_after_end": 2})
    assert result.outcomes["eof"] == N and set(result.trials["writes"]) == {"ok ok"}
    assert result.kernel["OutRsts"] == 0


def test_through_a_delay_line_the_rst_arrives_one_delay_later_and_is_relayed_as_rst():
    result = lablib.run("close-basics", 5, {"close.mode": "unread", "wire.delay": 0.02})
    assert result.outcomes["econnreset"] == 5
    assert (result.trials["duration_ms"] >= 40).all()  # request there, reply and RST back: two delays
    assert (result.trials["OutRsts"] == 2).all()  # the server's RST, and the delay line's relayed one


def test_through_a_delay_line_a_write_after_the_fin_still_draws_the_rst():
    result = lablib.run("close-basics", 5, {"close.mode": "drained", "client.writes_after_end": 2,
                                            "wire.delay": 0.005})
    assert result.outcomes["epipe"] == 5 and set(result.trials["writes"]) == {"ok EPIPE"}


def test_the_exercise_checker_accepts_the_measured_answer_and_rejects_another():
    config = {"close.mode": "unread", "client.request_bytes": 0}
    right, text = check_prediction({"server_sends": "fin", "client_sees": "EOF"}, config, trials=3)
    assert right and text.count("right") == 2
    right, text = check_prediction({"server_sends": "RST", "client_sees": "eof"}, config, trials=3)
    assert not right and "not quite: server_sends = FIN (you said RST)" in text
    right, text = check_prediction({"server_sends": "???", "client_sees": ""}, config)
    assert not right and text.startswith("Fill in your prediction for server_sends and client_sees")


def test_the_checker_grades_what_the_servers_calls_sent_not_later_kernel_resets():
    config = {"close.mode": "drained", "client.writes_after_end": 2}
    right, text = check_prediction({"server_sends": "FIN", "client_sees": "epipe"}, config, trials=3)
    assert right, text


def test_shutdown_needs_time_to_linger():
    with pytest.raises(lablib.KnobError, match="close.linger_timeout"):
        lablib.run("close-basics", 1, {"close.mode": "shutdown", "close.linger_timeout": 0})
