"""A TCP proxy for outage tests: forwards a local port to a server until it is cut."""

from __future__ import annotations

import contextlib
import socket
import threading


class TcpProxy:
    """Forwards 127.0.0.1:`port` to `target`. `cut()` drops every connection and hangs up on
    new ones at once (as a crashed server or a failed-over address would); `freeze()` keeps
    every connection open but silently drops what passes (as a hung pooler or a black-holed
    route would); `restore()` forwards again. `accepted` counts the connections opened."""

    def __init__(self, target: tuple[str, int]) -> None:
        self._target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.accepted = 0
        self._forwarding = True
        self._frozen = False
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            with self._lock:
                self.accepted += 1
                forwarding = self._forwarding
            if not forwarding:
                client.close()
                continue
            if self._frozen:
                with self._lock:
                    self._sockets.append(client)  # held open, never answered
                continue
            upstream = socket.create_connection(self._target)
            with self._lock:
                self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                if not self._frozen:
                    sink.sendall(data)
        except OSError:
            pass  # the other side, or cut(), closed it
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        with self._lock:
            self._forwarding = False
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def freeze(self) -> None:
        self._frozen = True

    def restore(self) -> None:
        with self._lock:
            self._forwarding = True
            self._frozen = False

    def close(self) -> None:
        self.cut()
        self._listener.close()
