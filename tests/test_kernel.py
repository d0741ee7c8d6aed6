"""Kernel evidence: counters from /proc without root, and the state of sockets we closed."""

import socket
import struct

from lablib import kernel

SNMP = """Ip: Forwarding DefaultTTL
Ip: 2 64
Tcp: RtoAlgorithm RtoMin OutRsts EstabResets
Tcp: 1 200 7 3
"""


def test_counter_tables_are_read_by_name():
    assert kernel.parse_counter_table(SNMP, "Tcp") == {"RtoAlgorithm": 1, "RtoMin": 200, "OutRsts": 7, "EstabResets": 3}
    assert kernel.parse_counter_table(SNMP, "Udp") == {}


def _pair():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    return listener, client, server


def test_close_with_unread_data_is_counted_as_an_rst():
    listener, client, server = _pair()
    with listener, client:
        client.sendall(b"x" * 100)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 100)
        with kernel.Counters() as c:
            server.close()  # 100 bytes unread: the kernel sends RST
        assert c.delta["OutRsts"] >= 1 and c.delta["TCPAbortOnClose"] >= 1


def test_linger_zero_is_counted_as_abort_on_data():
    listener, client, server = _pair()
    with listener, client:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with kernel.Counters() as c:
            server.close()
        assert c.delta["OutRsts"] >= 1 and c.delta["TCPAbortOnData"] >= 1


def test_states_of_a_closed_socket_come_from_sock_diag():
    listener, client, server = _pair()
    with listener:
        server_end = (server.getsockname(), server.getpeername())
        client_end = (client.getsockname(), client.getpeername())
        assert kernel.socket_state(*server_end) == "ESTABLISHED"
        server.close()  # nothing unread: FIN; the orphan waits in FIN_WAIT1/2
        assert client.recv(10) == b""
        assert kernel.socket_state(*server_end) in ("FIN_WAIT1", "FIN_WAIT2")
        assert kernel.socket_state(*client_end) == "CLOSE_WAIT"
        client.close()
        assert client.fileno() == -1
        # the side that closed first ends in TIME_WAIT (closing last, the client is freed)
        assert kernel.socket_state(*server_end) == "TIME_WAIT"
        assert kernel.socket_state(*client_end) in ("GONE", "LAST_ACK")


def test_a_connection_that_was_reset_is_gone_not_its_listener():
    listener, client, server = _pair()
    with listener, client:
        server_end = (server.getsockname(), server.getpeername())
        server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        server.close()
        assert kernel.socket_state(*server_end) == "GONE"
