"""TracedSocket: a non-blocking TCP socket on an asyncio loop whose every call is recorded.

This is the thin I/O layer under every actor. It does one syscall per recorded event, so the
trace shows what a C program (Envoy, nginx) would do: ``send`` is one ``send()`` that may be
partial, ``sendall`` is several. ``close`` records how many received bytes were still unread
(FIONREAD): with any unread, Linux answers the close with RST instead of FIN (tcp_close,
RFC 2525 section 2.17). ``abort`` is SO_LINGER 0 then close: RST always.

The ``wire`` field of a close, shutdown or abort event is the segment the call makes the
kernel send, inferred from the call, the unread count and the TCP state at that moment;
kernel counters and captures confirm it.

Every socket is bound to 127.0.0.1 only. Calls must be made on the loop thread that owns the
socket. Not covered: IPv6, urgent data, and sockets not created through this class.
"""

from __future__ import annotations

import array
import asyncio
import errno
import fcntl
import select
import socket
import struct
import termios
import threading
import time
from typing import Any, Callable

from . import kernel
from .tcpinfo import TCP_INFO_BUFFER, parse_tcp_info, state_name
from .trace import Trace

__all__ = ["TracedSocket", "conn_name", "errno_name", "LOOPBACK", "close_leftovers"]

LOOPBACK = "127.0.0.1"
#: states in which an abortive close sends RST (Linux tcp_need_reset)
_STATES_THAT_RESET = {"ESTABLISHED", "CLOSE_WAIT", "FIN_WAIT1", "FIN_WAIT2", "SYN_RECV"}
#: states in which our side has not sent its FIN yet
_STATES_BEFORE_OUR_FIN = {"ESTABLISHED", "CLOSE_WAIT", "SYN_RECV"}
#: SO_TIMESTAMPNS (asm-generic value; Python's socket module does not name it) and the
#: ancillary buffer its struct timespec needs
_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_STAMP_SPACE = socket.CMSG_SPACE(16)

# Every TracedSocket not yet closed, so teardown can close what a cancelled task left open.
_open: set["TracedSocket"] = set()
_open_lock = threading.Lock()


def errno_name(exc: BaseException) -> str:
    code = getattr(exc, "errno", None)
    if isinstance(code, int):
        return errno.errorcode.get(code, str(code))
    return type(exc).__name__


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class TracedSocket:
    """One TCP socket of one actor. Create it with :meth:`listen`, :meth:`connect` or
    :meth:`accept`; end it with :meth:`close`, :meth:`abort` or :meth:`shutdown` + close."""

    def __init__(self, sock: socket.socket, trace: Trace, actor: str, conn: str = "",
                 local: tuple[str, int] | None = None, remote: tuple[str, int] | None = None) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.trace = trace
        self.actor = actor
        self.conn = conn
        self.local = local or sock.getsockname()
        self.remote = remote
        self.closed = False
        self.shut_wr = False
        self.close_unread = -1  # bytes unread when close() or abort() ran
        self.ends_sent: list[str] = []  # the FIN and RST this socket's calls made the kernel send
        self.bytes_sent = 0
        self.bytes_received = 0
        self.accept_index = -1  # set by the role that accepted it: 0 for its first connection
        # fd registrations of pending waits (writable -> future), so close() can undo them
        self._waits: dict[bool, asyncio.Future[None]] = {}
        self._watching = False  # a watch() callback is registered
        self._stamped = False  # the kernel stamps received segments (stamp_arrivals)
        #: monotonic ns at which the kernel received the last byte the latest recv returned
        #: (with stamp_arrivals on; otherwise, and for EOF, when that recv ran)
        self.last_arrival_ns = 0
        #: whether last_arrival_ns came from the kernel's stamp
        self.arrival_stamped = False
        with _open_lock:
            _open.add(self)

    def __repr__(self) -> str:
        status = "closed" if self.closed else "open"
        return f"<TracedSocket {self.actor} {self.conn or self.local} {status}>"

    # --- opening -----------------------------------------------------------------------------

    @classmethod
    def listen(cls, trace: Trace, actor: str, backlog: int = 128, port: int = 0) -> "TracedSocket":
        """A listening socket on 127.0.0.1, on ``port`` (0: a free port the kernel picks).

        A port already in use raises OSError(EADDRINUSE) with a message that says so."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind((LOOPBACK, port))
            sock.listen(backlog)
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                raise OSError(exc.errno, f"port {port} on {LOOPBACK} is in use; choose another, "
                                         f"or 0 for any free port") from None
            raise
        except BaseException:
            sock.close()
            raise
        self = cls(sock, trace, actor)
        self._record("listen", detail=f"{self.local[0]}:{self.local[1]}")
        return self

    @classmethod
    async def connect(cls, address: tuple[str, int], trace: Trace, actor: str) -> "TracedSocket":
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        began = time.monotonic_ns()  # connect() sends the SYN: stamped when it starts
        try:
            await asyncio.get_running_loop().sock_connect(sock, address)
        except BaseException as exc:
            trace.record(actor, "connect", t_ns=began, result=errno_name(exc), detail=f"to {address[0]}:{address[1]}")
            sock.close()
            raise
        local = sock.getsockname()
        self = cls(sock, trace, actor, conn=conn_name(local[1], address[1]), local=local, remote=tuple(address))
        self._record("connect", t_ns=began, state="ESTABLISHED")
        return self

    async def accept(self, actor: str | None = None) -> "TracedSocket":
        sock, peer = await asyncio.get_running_loop().sock_accept(self.sock)
        try:
            child = TracedSocket(sock, self.trace, actor or self.actor, conn=conn_name(peer[1], self.local[1]),
                                 local=self.local, remote=peer)
        except BaseException:
            sock.close()
            raise
        child._stamped = self._stamped  # the kernel copies SO_TIMESTAMPNS to accepted sockets
        child._record("accept", state="ESTABLISHED")
        return child

    # --- data --------------------------------------------------------------------------------

    async def recv(self, size: int = 65536) -> bytes:
        """One ``recv()`` that returned: data, ``b""`` for EOF; raises ConnectionResetError
        and friends after recording them."""
        while True:
            data = self.recv_now(size)
            if data is not None:
                return data
            await self._wait(writable=False)

    def recv_now(self, size: int = 65536) -> bytes | None:
        """One non-blocking ``recv()``: data, ``b""`` for EOF, or None if nothing is pending;
        raises ConnectionResetError and friends after recording them. For a callback that
        runs when the socket is readable (:meth:`watch`)."""
        try:
            if self._stamped:
                data, ancillary, _, _ = self.sock.recvmsg(size, _STAMP_SPACE)
            else:
                data, ancillary = self.sock.recv(size), []
        except BlockingIOError:
            return None
        except OSError as exc:
            self._record("recv", result=errno_name(exc))
            raise
        self.last_arrival_ns, self.arrival_stamped = _arrival_ns(ancillary)
        self.bytes_received += len(data)
        self._record("recv", nbytes=len(data), result="ok" if data else "eof")
        return data

    def stamp_arrivals(self) -> bool:
        """Have the kernel stamp each segment it receives (SO_TIMESTAMPNS), so that
        :attr:`last_arrival_ns` says when the data came in, not when this program got round
        to reading it. A relay that times its forwarding from that stamp is not made late by
        its own loop's lateness. False if this kernel does not offer the stamps.

        The kernel switches stamping on for the whole system when the first socket asks, a
        moment later (a deferred work item): segments received in that moment carry no stamp,
        and their recv falls back to its own time. A role keeps it on by asking on its
        listener (sockets it accepts inherit the option, and stamp without asking)."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
        except OSError:
            return False
        self._stamped = True
        return True

    def watch(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` on the running loop, as one of the loop's reader callbacks, each
        time the socket is readable (data, EOF or an error pending), until :meth:`unwatch` or
        close. Unlike awaiting :meth:`recv`, whose task wakes one loop iteration after the
        readiness, the callback runs in the iteration whose poll saw it: what an event loop
        in C (libevent, Envoy's dispatcher) does with a file event."""
        if self.closed:
            raise OSError(errno.EBADF, "socket already closed")
        loop = asyncio.get_running_loop()
        if self._watching:
            self.unwatch()
        loop.add_reader(self.sock.fileno(), callback)
        self._watching = True

    def unwatch(self) -> None:
        """Stop the :meth:`watch` callback (nothing if none)."""
        if self._watching:
            self._watching = False
            try:
                asyncio.get_running_loop().remove_reader(self.sock.fileno())
            except RuntimeError:  # teardown after the loop stopped
                pass

    async def send(self, data: bytes | memoryview) -> int:
        """One ``send()`` that returned: how many bytes the kernel took (maybe fewer than given)."""
        while True:
            began = time.monotonic_ns()
            try:
                sent = self.sock.send(data)
            except BlockingIOError:
                await self._wait(writable=True)
                continue
            except OSError as exc:
                self._record("send", t_ns=began, result=errno_name(exc))
                raise
            self.bytes_sent += sent
            self._record("send", t_ns=began, nbytes=sent)
            return sent

    async def sendall(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[await self.send(view):]

    async def drain(self, deadline: float | None = None, chunk: int = 262144) -> tuple[int, str]:
        """Read and discard until EOF, an error, or the monotonic ``deadline`` passes.

        Returns (bytes discarded, how it ended: ``eof``, an errno name, or ``deadline``).
        """
        total = 0
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return total, "deadline"
            try:
                data = await asyncio.wait_for(self.recv(chunk), remaining)
            except TimeoutError:
                return total, "deadline"
            except OSError as exc:
                return total, errno_name(exc)
            if not data:
                return total, "eof"
            total += len(data)

    # --- ending ------------------------------------------------------------------------------

    def shutdown(self) -> None:
        """``shutdown(SHUT_WR)``: FIN once the send queue drains; reading goes on (half-close)."""
        state = self.tcp_state()
        began = time.monotonic_ns()
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            self._record("shutdown", t_ns=began, result=errno_name(exc), state=state)
            raise
        wire = "FIN" if not self.shut_wr and state in _STATES_BEFORE_OUR_FIN else ""
        self.shut_wr = True
        if wire:
            self.ends_sent.append(wire)
        self._record("shutdown", t_ns=began, state=state, wire=wire, detail="SHUT_WR")

    def close(self, detail: str = "") -> None:
        """``close()``; records the unread bytes and the segment that follows (RST if any unread)."""
        self._close("close", detail)

    def abort(self, detail: str = "") -> None:
        """Abortive close: SO_LINGER {on, 0} then ``close()``: the kernel sends RST."""
        if self.closed:
            return
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass  # an already-reset socket; close() below still frees it
        self._close("abort", detail or "SO_LINGER 0")

    def _close(self, op: str, detail: str) -> None:
        if self.closed:
            return
        unread = self.unread()
        state = self.tcp_state()
        if state in ("LISTEN", "CLOSE", "") or state.startswith("UNKNOWN"):
            wire = ""
        elif unread > 0 or op == "abort":
            wire = "RST" if state in _STATES_THAT_RESET or unread > 0 else ""
        elif self.shut_wr or state not in _STATES_BEFORE_OUR_FIN:
            wire = ""
        else:
            wire = "FIN"
        self._drop_waits()
        self.closed = True
        self.close_unread = unread
        if wire:
            self.ends_sent.append(wire)
        with _open_lock:
            _open.discard(self)
        began = time.monotonic_ns()
        self.sock.close()
        self._record(op, t_ns=began, unread=unread, state=state, wire=wire, detail=detail)

    # --- inspection --------------------------------------------------------------------------

    def unread(self) -> int:
        """Bytes received by the kernel that the program has not read (FIONREAD); -1 if unknown."""
        if self.closed:
            return -1
        buf = array.array("i", [0])
        try:
            fcntl.ioctl(self.sock.fileno(), termios.FIONREAD, buf)
        except OSError:
            return -1
        return buf[0]

    def readable_now(self) -> bool:
        """A zero-timeout poll, as urllib3's ``is_connection_dropped`` does before it reuses a
        pooled connection: True if data, an EOF or an error is waiting. Recorded as a ``state``
        event, since it is a call whose answer decides what the client does next."""
        readable = bool(select.select([self.sock], [], [], 0)[0])
        self._record("state", state=self.tcp_state(),
                     detail="poll before reuse: " + ("readable (FIN or data waiting)" if readable else "nothing"))
        return readable

    def tcp_info(self) -> dict[str, Any]:
        """TCP_INFO of this socket, every field this kernel provides (see :mod:`lablib.tcpinfo`)."""
        return parse_tcp_info(self.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_BUFFER))

    def tcp_state(self) -> str:
        """This socket's TCP state (``ESTABLISHED``, ``CLOSE_WAIT``...); after close, the
        kernel's state of the connection (``FIN_WAIT2``, ``TIME_WAIT``, ``GONE``)."""
        if self.closed:
            return self.kernel_state()
        try:  # the state is the struct's first byte: ask for that alone (parsing all is 50x dearer)
            raw = self.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)
        except OSError:
            return ""
        return state_name(raw[0]) if raw else ""

    def kernel_state(self) -> str:
        """The kernel's view of this connection by 4-tuple, also after this process closed it."""
        if self.remote is None:
            return "LISTEN" if not self.closed else "GONE"
        return kernel.socket_state(self.local, self.remote)

    def note_state(self, detail: str = "") -> str:
        """Record the current TCP state as a ``state`` event and return it."""
        state = self.tcp_state()
        self._record("state", state=state, detail=detail or ("after close" if self.closed else ""))
        return state

    async def wait_readable(self, low_water: int = 1) -> None:
        """Wait until ``low_water`` bytes are unread, or EOF or an error is pending (SO_RCVLOWAT)."""
        if low_water > 1:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, low_water)
        try:
            await self._wait(writable=False)
        finally:
            if low_water > 1 and not self.closed:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)

    async def wait_reset(self) -> str | None:
        """After EOF, wait until the connection is reset or fully closed; return the reset's
        errno name (``ECONNRESET``, ``EPIPE``), or None if both directions closed cleanly.

        A socket that has read EOF stays readable, so readiness cannot tell a later RST. This
        waits on a private epoll set that reports only EPOLLERR and EPOLLHUP for this socket
        (HUP: both directions shut, which an RST also causes), then reads SO_ERROR. If a
        ``send`` already collected the error, the reset shows as a clean close here.
        """
        loop = asyncio.get_running_loop()
        watch = select.epoll()
        try:
            watch.register(self.sock.fileno(), select.EPOLLERR | select.EPOLLHUP)
            fut: asyncio.Future[None] = loop.create_future()
            loop.add_reader(watch.fileno(), _wake, fut)
            try:
                await fut
            finally:
                loop.remove_reader(watch.fileno())
        finally:
            watch.close()
        code = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        return errno.errorcode.get(code, str(code)) if code else None

    async def wait_acked(self, timeout: float) -> bool:
        """Wait until the peer's kernel has acknowledged every byte sent, or the connection was
        reset; False if ``timeout`` passes first.

        The kernel signals no event for "all acknowledged", so this polls TCP_INFO (unacked),
        at first immediately and then backing off from 50 us to 2 ms.
        """
        deadline = time.monotonic() + timeout
        pause = 50e-6
        while True:
            info = self.tcp_info()
            if info.get("unacked", 0) == 0 or info.get("state_name") == "CLOSE":
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(pause)
            pause = min(pause * 2, 2e-3)

    # --- internals ---------------------------------------------------------------------------

    async def _wait(self, writable: bool) -> None:
        if self.closed:
            raise OSError(errno.EBADF, "socket already closed")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        fd = self.sock.fileno()
        (loop.add_writer if writable else loop.add_reader)(fd, _wake, fut)
        self._waits[writable] = fut
        try:
            await fut
        finally:
            # close() may have dropped the registration already; after that the fd number can
            # belong to a new socket, whose registration must not be removed from here
            if self._waits.get(writable) is fut:
                del self._waits[writable]
                (loop.remove_writer if writable else loop.remove_reader)(fd)

    def _drop_waits(self) -> None:
        """Before the fd closes: unregister pending waits, and wake their callers with EBADF."""
        self.unwatch()
        if not self._waits:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # teardown after the loop stopped: its selector is gone already
            self._waits.clear()
            return
        fd = self.sock.fileno()
        for writable, fut in list(self._waits.items()):
            (loop.remove_writer if writable else loop.remove_reader)(fd)
            if not fut.done():
                fut.set_exception(OSError(errno.EBADF, "socket closed while waiting"))
        self._waits.clear()

    def _record(self, op: str, **fields: Any) -> None:
        self.trace.record(self.actor, op, conn=self.conn, **fields)


def conn_name(client_port: int, server_port: int) -> str:
    """The name of one TCP connection in a trace, the same at both ends: ``client>server``
    ports. (Through a delay line a request crosses two connections, so two names.)"""
    return f"{client_port}>{server_port}"


def _arrival_ns(ancillary: list[tuple[int, int, bytes]]) -> tuple[int, bool]:
    """The monotonic ns of a receive stamp (an SCM_TIMESTAMPNS struct timespec, on the
    realtime clock) in ``ancillary``, and True; (now, False) if there is none (EOF, stamps
    off) or it is not plausible (in the future, or over a second old: the realtime clock was
    set meanwhile)."""
    now = time.monotonic_ns()
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and len(data) >= 16:
            seconds, nanos = struct.unpack_from("qq", data)
            at = seconds * 1_000_000_000 + nanos - (time.time_ns() - now)
            if now - 1_000_000_000 <= at <= now + 1_000_000:  # (the two clock reads differ by us)
                return min(at, now), True
    return now, False


def close_leftovers(trace: Trace) -> int:
    """Close every TracedSocket of ``trace``'s run still open (call after their loops have
    stopped); returns how many there were."""
    with _open_lock:
        leftovers = [s for s in _open if s.trace is trace]
    for s in leftovers:
        s.close(detail="teardown")
    return len(leftovers)
