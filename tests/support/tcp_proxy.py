"""A small threaded TCP proxy for fault injection between an MQTT client and the broker.

Modes, switchable at any time:

* ``pass``: forward bytes both ways.
* ``swallow``: accept and read, forward nothing, keep every socket open. Connections that
  were swallowed stay dead after switching back to ``pass`` (like a link that lost packets
  mid-stream); new connections are forwarded again. This is a half-open link for the client.
* ``cut``: close every connection now; new connections are accepted and closed at once.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from typing import Literal

Mode = Literal["pass", "swallow", "cut"]


class _Link:
    def __init__(self, client: socket.socket, upstream: socket.socket | None) -> None:
        self.client = client
        self.upstream = upstream
        self.dead = upstream is None  # a swallowed link never forwards again
        self.closed = False

    def close(self) -> None:
        self.closed = True
        for sock in (self.client, self.upstream):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()


class TcpProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self._mode: Mode = "pass"
        self._lock = threading.Lock()
        self._links: list[_Link] = []
        self._server = socket.socket()
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(16)
        self.port: int = self._server.getsockname()[1]
        self.accepted = 0
        self._running = False

    def start(self) -> TcpProxy:
        self._running = True
        threading.Thread(target=self._accept_loop, name="tcp-proxy", daemon=True).start()
        return self

    @property
    def mode(self) -> Mode:
        return self._mode

    def set_mode(self, mode: Mode) -> None:
        with self._lock:
            self._mode = mode
            links = list(self._links)
        for link in links:
            if mode == "swallow":
                link.dead = True
            elif mode == "cut":
                link.close()

    def stop(self) -> None:
        self._running = False
        self.set_mode("cut")
        with contextlib.suppress(OSError):
            self._server.close()

    def _accept_loop(self) -> None:
        while self._running:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            self.accepted += 1
            if self._mode == "cut":
                client.close()
                continue
            upstream = None
            if self._mode == "pass":
                try:
                    upstream = socket.create_connection(self.target, timeout=2)
                except OSError:
                    client.close()
                    continue
            link = _Link(client, upstream)
            with self._lock:
                self._links.append(link)
            threading.Thread(target=self._pump, args=(link,), daemon=True).start()

    def _pump(self, link: _Link) -> None:
        socks = [s for s in (link.client, link.upstream) if s is not None]
        try:
            while not link.closed:
                readable, _, _ = select.select(socks, [], [], 0.1)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        link.close()
                        break
                    peer = link.upstream if sock is link.client else link.client
                    if not link.dead and peer is not None:
                        peer.sendall(data)
        except (OSError, ValueError):
            link.close()
        finally:
            with self._lock:
                if link in self._links:
                    self._links.remove(link)
