"""A TCP proxy on 127.0.0.1 in front of a server, that a test can cut: an outage of the S3 endpoint
without restarting moto's server (which keeps its buckets in memory and would lose them)."""
from __future__ import annotations

import socket
import struct
import threading
from urllib.parse import urlsplit


class TcpProxy:
    """Forwards every connection to `target` (http://HOST:PORT) while open. `cut()` resets the open
    connections and, until `restore()`, every new one as soon as it is accepted: to a client the
    endpoint is down (connection reset), as in a network outage."""

    def __init__(self, target: str) -> None:
        parts = urlsplit(target)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.open = True
        self.live: set[socket.socket] = set()
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
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
        for sock in (src, dst):
            self._drop(sock)

    def _drop(self, sock: socket.socket) -> None:
        with self.lock:
            self.live.discard(sock)
        _reset(sock)

    def cut(self) -> None:
        """Reset every open connection and refuse new ones until restore()."""
        self.open = False
        with self.lock:
            live, self.live = list(self.live), set()
        for sock in live:
            _reset(sock)

    def restore(self) -> None:
        self.open = True

    def close(self) -> None:
        self.cut()
        self.listener.close()


def _reset(sock: socket.socket) -> None:
    """Close with a reset (SO_LINGER 0), as a dropped connection looks to the other side."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    except OSError:
        pass
