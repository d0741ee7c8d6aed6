"""TCP_INFO is parsed by offset, so any kernel's struct size works, and states are right."""

import socket
import struct

from lablib.tcpinfo import parse_tcp_info


def test_short_structs_yield_only_the_fields_that_fit():
    old_kernel = struct.pack("=8B24I", 1, 0, 0, 0, 0, 0, 0, 0, *range(24))  # 104 bytes, like 2.6
    info = parse_tcp_info(old_kernel)
    assert info["state_name"] == "ESTABLISHED" and info["rtt_us"] == 15 and info["struct_size"] == 104
    assert "bytes_acked" not in info and "total_rto_time_ms" not in info


def test_unknown_state_numbers_are_named_as_such():
    assert parse_tcp_info(bytes([99]) + bytes(7))["state_name"] == "UNKNOWN(99)"


def test_states_of_a_real_connection_through_a_half_close():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
        with client, server:
            state = lambda s: parse_tcp_info(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 512))["state_name"]
            assert state(listener) == "LISTEN"
            assert state(client) == state(server) == "ESTABLISHED"
            client.shutdown(socket.SHUT_WR)
            assert server.recv(10) == b""  # the FIN has arrived
            assert state(server) == "CLOSE_WAIT"
            assert state(client) in ("FIN_WAIT1", "FIN_WAIT2")  # FIN_WAIT2 once the ACK is back
            info = parse_tcp_info(client.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 512))
            assert info["struct_size"] >= 104 and info["rtt_us"] > 0
