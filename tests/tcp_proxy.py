"""A loopback TCP forwarder in front of the S3 server, so tests can take the store down and up.

Down means what an outage looks like to a client: open connections are reset, and new ones are
reset as soon as they arrive (and counted, so a test can tell its job really met the outage). The
S3 server behind keeps its data, which a restart of moto would not.

`down_at(pattern, seconds)` arms an outage that starts at the first request whose bytes contain
`pattern` (say, the first PUT under a staging prefix), before that request reaches the server:
the fault lands at an exact point of a job, not at a moment a timer guessed. With `deliver=True`
the request reaches the server first and the outage cuts off its answer: the server acted on a
request whose client saw only a reset connection; then the pattern must start the request (its
request line), so it can't fire inside another request's body (an upload of this very file).
"""

from __future__ import annotations

import socket
import struct
import threading


def _reset(s: socket.socket) -> None:
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
        s.close()
    except OSError:
        pass


class TcpProxy:
    def __init__(self, upstream_port: int, host: str = "127.0.0.1"):
        self.host, self.upstream_port = host, upstream_port
        self.refused = 0  # connections reset on arrival while down
        self.is_up = True
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._trigger: tuple[bytes, float | None, bool] | None = None
        self._doomed: dict[socket.socket, float | None] = {}  # server sockets whose next answer starts an outage
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, 0))
        self._listener.listen(256)
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def upstream_url(self) -> str:
        return f"http://{self.host}:{self.upstream_port}"

    def up(self) -> None:
        with self._lock:
            self.is_up, self._trigger = True, None

    def down(self, seconds: float | None = None) -> None:
        """Reset every open connection and refuse new ones, for `seconds` (None: until up())."""
        with self._lock:
            self.is_up = False
            conns, self._conns = self._conns, set()
        for c in conns:
            _reset(c)
        if seconds is not None:
            threading.Timer(seconds, self.up).start()

    def down_at(self, pattern: bytes, seconds: float | None = None, deliver: bool = False) -> None:
        with self._lock:
            self._trigger = (pattern, seconds, deliver)

    def close(self) -> None:
        self.down()
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed
                return
            if not self.is_up:
                self.refused += 1
                _reset(client)
                continue
            try:
                server = socket.create_connection((self.host, self.upstream_port))
            except OSError:
                _reset(client)
                continue
            with self._lock:
                self._conns |= {client, server}
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        try:
            while data := src.recv(65536):
                trigger = self._trigger
                if from_client and trigger is not None and (data.startswith(trigger[0]) if trigger[2]
                                                            else trigger[0] in data):
                    with self._lock:
                        trigger, self._trigger = self._trigger, None
                    if trigger is not None and trigger[2]:
                        # Delivered: the outage starts when the server's answer comes (see below).
                        with self._lock:
                            self._doomed[dst] = trigger[1]
                    elif trigger is not None:
                        self.down(trigger[1])  # resets src and dst too: this request never arrives
                        return
                if not from_client and src in self._doomed:
                    # The server acted on the request and answers: the answer is lost in the outage.
                    # (Shut down, not only closed: the client's own pump thread is blocked reading it,
                    # and a close alone would not end that read, nor tell the client anything.)
                    with self._lock:
                        seconds = self._doomed.pop(src, None)
                    try:
                        dst.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    self.down(seconds)
                    return
                if not self.is_up:
                    return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._conns.discard(src)
                self._conns.discard(dst)
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            src.close()
