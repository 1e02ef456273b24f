"""A TCP proxy on 127.0.0.1 in front of a server, that a test can cut: an outage of the S3 endpoint
without restarting moto's server (which keeps its buckets in memory and would lose them)."""
from __future__ import annotations

import socket
import struct
import threading
import time
from urllib.parse import urlsplit


class TcpProxy:
    """Forwards every connection to `target` (http://HOST:PORT) while open. `cut()` resets the open
    connections and, until `restore()`, every new one as soon as it is accepted: to a client the
    endpoint is down (connection reset), as in a network outage; `cut(refuse=True)` closes the listener,
    so that connections are refused."""

    def __init__(self, target: str) -> None:
        parts = urlsplit(target)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.listener: socket.socket | None = None
        self.port = self._listen(0)
        self.url = f"http://127.0.0.1:{self.port}"
        self.open = True
        self.live: set[socket.socket] = set()
        self.lock = threading.Lock()

    def _listen(self, port: int) -> int:
        """Listen on `port` (0: a free one); a port just given up may take a moment to be free again."""
        for attempt in range(50):
            try:
                self.listener = socket.create_server(("127.0.0.1", port))
                break
            except OSError:
                if attempt == 49:
                    raise
                time.sleep(0.1)
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()
        return self.listener.getsockname()[1]

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # closed
                return
            if not self.open:
                _reset(client)
                continue
            upstream = socket.create_connection(self.target)
            with self.lock:
                self.live |= {client, upstream}
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):  # one side ended: end the other too (an end, not a reset: replies in flight arrive)
            with self.lock:
                self.live.discard(sock)
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def cut(self, refuse: bool = False) -> None:
        """Reset every open connection and every new one until restore(); with `refuse`, stop listening
        instead, so that new connections are refused (connection refused rather than reset)."""
        self.open = False
        if refuse:
            self._stop_listening()
        with self.lock:
            live, self.live = list(self.live), set()
        for sock in live:
            _reset(sock)

    def restore(self) -> None:
        if self.listener is None:
            self._listen(self.port)
        self.open = True

    def _stop_listening(self) -> None:
        if self.listener is not None:
            try:  # wakes the thread blocked in accept(); close() alone would leave the port listening
                self.listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.listener.close()
            self.listener = None

    def close(self) -> None:
        self.cut(refuse=True)


def _reset(sock: socket.socket) -> None:
    """Close with a reset (SO_LINGER 0), as a dropped connection looks to the other side."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    except OSError:
        pass
