"""The command line, run as a user runs it: in a subprocess, reading stdout and the exit status."""

import json
import re
import shutil
import signal
import subprocess
import sys

import pytest

MODES = ["drained", "unread", "shutdown", "linger0"]


def lablib(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "lablib", *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("mode", MODES)
def test_run_json_reports_outcomes_and_kernel_deltas(mode):
    out = lablib("run", "close-basics", "--trials", "20", "--set", f"close.mode={mode}", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert {"scenario", "config", "trials", "outcomes", "kernel", "elapsed_s"} <= set(data)
    assert data["config"]["close.mode"] == mode and data["trials"] == 20
    if mode in ("unread", "linger0"):
        assert data["outcomes"]["econnreset"] == 20 and data["kernel"]["OutRsts"] >= 20
    else:
        assert data["outcomes"]["eof"] == 20 and data["kernel"]["TCPAbortOnClose"] == 0
        assert data["kernel"]["TCPAbortOnData"] == 0


def test_run_prints_a_readable_summary_and_can_draw_the_ladder(tmp_path):
    png = tmp_path / "ladder.png"
    out = lablib("run", "close-basics", "--trials", "5", "--set", "close.mode=unread", "--ladder", str(png))
    assert out.returncode == 0, out.stderr
    assert re.search(r"econnreset\s+5\s+100\.0%", out.stdout) and "kernel: OutRsts +" in out.stdout
    assert png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("args, words", [
    (["run", "nope"], "unknown scenario 'nope'; choose one of close-basics"),
    (["run", "close-basics", "--set", "close.mod=x"], "unknown knob 'close.mod'"),
    (["run", "close-basics", "--set", "close.mode=x"], "choose one of drained, unread, shutdown, linger0"),
    (["run", "close-basics", "--set", "wire.delay=-1"], "out of range"),
    (["run", "close-basics", "--trials", "0"], "trials=0"),
    (["run", "close-basics", "--trials", "many"], "invalid int value"),
    (["run", "close-basics", "--deadline", "-1"], "deadline=-1"),
    (["serve", "nope"], "unknown role 'nope'; choose one of server"),
    (["serve", "server", "--set", "server.keepalive_timeout=-1"], "server.keepalive_timeout"),
    (["serve", "server", "--port", "70000"], "--port 70000"),
    (["knobs", "nope"], "unknown scenario 'nope'"),
    (["bench", "--trials", "1"], "--trials 1"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
])
def test_bad_input_exits_2_with_one_line_and_no_traceback(args, words):
    out = lablib(*args)
    assert out.returncode == 2
    assert out.stdout == "" and out.stderr.count("\n") == 1, out.stderr
    assert words in out.stderr and "Traceback" not in out.stderr


def test_serve_refuses_a_port_in_use_in_one_line():
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        out = lablib("serve", "server", "--port", str(taken.getsockname()[1]))
    assert out.returncode == 2 and "is in use" in out.stderr and out.stderr.count("\n") == 1


def start_serving(*args):
    proc = subprocess.Popen([sys.executable, "-m", "lablib", "serve", "server", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
    assert match, (line, proc.stderr.read() if proc.poll() is not None else "")
    proc.stdout.readline()  # "Ctrl-C stops it."
    return proc, int(match.group(1))


def test_serve_answers_outside_clients_and_stops_cleanly_on_ctrl_c():
    import http.client

    proc, port = start_serving("--set", "server.keepalive_timeout=2")
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/")
        assert conn.getresponse().read() == b"ok\n"
        conn.close()
        if shutil.which("curl"):
            curl = subprocess.run(["curl", "-sS", f"http://127.0.0.1:{port}/"], capture_output=True, text=True,
                                  timeout=10)
            assert curl.stdout == "ok\n"
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0 and "Traceback" not in err
    assert re.search(r"server stopped after \d+ requests", out)


def test_serve_stops_on_sigterm_too():
    proc, _ = start_serving()
    proc.terminate()
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0 and "stopped" in out and err == ""


def test_knobs_lists_what_each_knob_models():
    out = lablib("knobs", "close-basics")
    assert out.returncode == 0
    assert "close.mode = drained" in out.stdout and "models:" in out.stdout
    out = lablib("knobs", "server")
    assert "server.close_timeout = 1s" in out.stdout and "Envoy delayed_close_timeout" in out.stdout


def test_doctor_says_whether_capture_works_and_why():
    out = lablib("doctor", "--json")
    assert out.returncode == 0
    report = json.loads(out.stdout)
    cap = report["capture"]
    assert isinstance(cap["available"], bool) and cap["reason"].startswith("available" if cap["available"] else "not")
    assert report["counters"]["readable"] is True and report["sock_diag"] is True
    assert set(report["tools"]) == {"curl", "nginx", "haproxy", "tshark"}
    text = lablib("doctor").stdout
    assert "packet capture:" in text and "kernel counters: readable" in text


def test_bench_reports_lablib_and_bare_sockets_side_by_side():
    out = lablib("bench", "--trials", "50", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    basics = report["close-basics"]
    assert [r["mode"] for r in basics["modes"]] == MODES
    for row in basics["modes"]:
        assert row["lablib_trials_per_s"] > 0 and row["bare_trials_per_s"] > 0 and row["bare_over_lablib"] > 0
    assert basics["memory"]["bytes_per_trial"] > 0
    early = report["early-close"]
    assert {(r["topology"], r["server.close_mode"]) for r in early["rows"]} == {
        ("direct", "close"), ("direct", "lingering"), ("proxy", "close"), ("proxy", "lingering")}
    assert all(r["trials_per_s"] > 0 and sum(r["outcomes"].values()) == 10 for r in early["rows"])
    keepalive = report["keepalive-reuse"]
    assert [r["offset_ms"] for r in keepalive["rows"]] == [-10, 0, 10]
    assert all(r["wall_s"] > 0 and sum(r["outcomes"].values()) == 10 for r in keepalive["rows"])
    framing = {r["setting"]: r for r in report["close-framing"]["rows"]}
    assert all(r["outcomes"]["complete"] == r["trials"] for r in framing.values())
    # a request that waits for the 1 s timer cannot go faster than one a second
    held, skipped = framing["delayed close, skip off"], framing["delayed close, skip on"]
    assert held["requests_per_s"] < 1.05 < skipped["requests_per_s"]
    upstream = report["upstream-reuse"]["rows"]
    assert {(r["path"], r["concurrency"]) for r in upstream} == {
        (path, c) for path in ("direct", "through the proxy") for c in (1, 8)}
    assert all(r["ok"] == r["requests"] == 50 and r["requests_per_s"] > 0 for r in upstream)
