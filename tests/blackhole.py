"""Network paths to PostgreSQL that fail without a word: a black hole, a stalled proxy.

A server that goes away cleanly refuses or resets connections, and clients see it at
once. A failover's old address, or a partition, answers nothing at all: a client waits
on its sent data (the kernel retransmits for ~15 minutes) unless it has a TCP user
timeout. This reproduces it on one machine, and nothing leaves the machine:

    client --TCP--> 10.x.y.2 (a network namespace, over a veth pair)
           --unix socket--> (this process) --TCP--> the test server

`cut()` sets the namespace's end of the veth down: packets sent to it are dropped, no
error comes back. `restore()` sets it up again. Needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN)
and iproute2's `ip`: without them the test skips, or fails where ATTNMON_REQUIRE_PEERS=1.

Run as a script, it is the forwarder: `python blackhole.py HOST PORT UNIX_PATH`.

`StalledProxy` is a TCP proxy on 127.0.0.1 that can stop passing data on while keeping
its connections open, as a frozen server or pooler does: TCP acknowledges everything,
keepalives are answered, and nothing comes back.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


def _pipe(a: socket.socket, b: socket.socket, hold=lambda: None) -> None:
    """Pass what `a` sends on to `b` (after `hold()`), until either side closes."""
    try:
        while data := a.recv(65536):
            hold()
            b.sendall(data)
    except OSError:
        pass
    finally:
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def forward(listener: socket.socket, connect, hold=lambda: None) -> None:
    """Accept on `listener` for ever, joining each connection to a new `connect()`
    (each chunk passed on after `hold()`)."""
    while True:
        try:
            client, _ = listener.accept()
            server = connect()
        except OSError:
            return  # the listener was closed
        for a, b in ((client, server), (server, client)):
            threading.Thread(target=_pipe, args=(a, b, hold), daemon=True).start()


class StalledProxy:
    """127.0.0.1:`port` to host:port; `stall()` holds what arrives, `resume()` passes it on.
    `delay_s`: each chunk waits this long before it is passed on (a slow path that still
    makes progress)."""

    def __init__(self, host: str, port: int):
        self.delay_s = 0.0
        self._open = threading.Event()
        self._open.set()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=forward, args=(self._listener, lambda: socket.create_connection((host, port), 5),
                                               self._hold), daemon=True).start()

    def _hold(self) -> None:
        while not self._open.wait(0.1):  # held, with the connection open
            pass
        time.sleep(self.delay_s)

    def stall(self) -> None:
        self._open.clear()

    def resume(self) -> None:
        self._open.set()

    def close(self) -> None:
        self._open.set()
        self._listener.close()


@dataclass
class Hole:
    host: str  # where the client connects: the namespace's address
    ns: str
    peer: str

    def cut(self) -> None:
        _ip("netns", "exec", self.ns, "ip", "link", "set", self.peer, "down")

    def restore(self) -> None:
        _ip("netns", "exec", self.ns, "ip", "link", "set", self.peer, "up")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@contextmanager
def black_hole(host: str, port: int, tmp: Path) -> Iterator[Hole]:
    """A path to host:port through a network namespace; raises OSError where one cannot be
    made (no root, no `ip`)."""
    if shutil.which("ip") is None:
        raise OSError("iproute2's `ip` is not installed")
    tag = os.getpid() % 60000
    ns, here, peer = f"attnmon-{tag}", f"amh{tag}", f"amp{tag}"
    net = f"10.{200 + tag // 10000 % 50}.{tag % 250}"
    sock_path = str(tmp / "pg.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(sock_path)
    listener.listen(64)
    threading.Thread(target=forward, args=(listener, lambda: socket.create_connection((host, port), 5)),
                     daemon=True).start()
    inner = None
    try:
        try:
            _ip("netns", "add", ns)
            _ip("link", "add", here, "type", "veth", "peer", "name", peer)
            _ip("link", "set", peer, "netns", ns)
            _ip("addr", "add", f"{net}.1/30", "dev", here)
            _ip("link", "set", here, "up")
            _ip("netns", "exec", ns, "ip", "addr", "add", f"{net}.2/30", "dev", peer)
            _ip("netns", "exec", ns, "ip", "link", "set", peer, "up")
        except subprocess.CalledProcessError as exc:
            raise OSError(f"cannot make a network namespace: {exc.stderr.decode().strip()}") from None
        inner = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, __file__, f"{net}.2", str(port),
                                  sock_path])
        deadline = time.monotonic() + 10
        while True:  # until the forwarder in the namespace listens
            try:
                socket.create_connection((f"{net}.2", port), 1).close()
                break
            except OSError:
                if time.monotonic() > deadline or inner.poll() is not None:
                    raise OSError("the forwarder in the namespace did not start") from None
                time.sleep(0.05)
        yield Hole(f"{net}.2", ns, peer)
    finally:
        if inner is not None:
            inner.kill()
            inner.wait()
        listener.close()
        subprocess.run(["ip", "link", "del", here], capture_output=True, timeout=10)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


if __name__ == "__main__":
    host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, port))
    srv.listen(64)

    def to_unix() -> socket.socket:
        s = socket.socket(socket.AF_UNIX)
        s.connect(path)
        return s

    forward(srv, to_unix)
