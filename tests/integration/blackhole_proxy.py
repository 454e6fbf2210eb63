#!/usr/bin/python3
"""A TCP proxy that can turn into a black hole, for link-cut tests.

    blackhole_proxy.py LISTEN_PORT TARGET_HOST TARGET_PORT

Prints "ready PORT" once listening (LISTEN_PORT 0 picks one). SIGUSR1
freezes it: no byte is read or forwarded in either direction and new
connections are accepted but not connected onwards, while every socket
stays open — what a cut cable or a dropped route looks like to both ends,
unlike a clean close. SIGUSR2 thaws it. SIGTERM ends it.
"""
import selectors
import signal
import socket
import sys

frozen = False


def on_freeze(signum, frame):
    global frozen
    frozen = signum == signal.SIGUSR1


def main():
    listen_port, host, port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    signal.signal(signal.SIGUSR1, on_freeze)
    signal.signal(signal.SIGUSR2, on_freeze)
    signal.signal(signal.SIGTERM, lambda s, f: sys.exit(0))
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", listen_port))
    lsock.listen(16)
    print("ready", lsock.getsockname()[1], flush=True)
    sel = selectors.DefaultSelector()
    sel.register(lsock, selectors.EVENT_READ, None)
    peer = {}       # socket -> the other end
    pending = []    # accepted while frozen: connected onwards at thaw

    def connect(c):
        try:
            u = socket.create_connection((host, port), timeout=5)
        except OSError:
            c.close()
            return
        u.setblocking(False)
        c.setblocking(False)
        peer[c], peer[u] = u, c
        sel.register(c, selectors.EVENT_READ, None)
        sel.register(u, selectors.EVENT_READ, None)

    def drop(s):
        o = peer.pop(s, None)
        for x in (s, o):
            if x is None:
                continue
            peer.pop(x, None)
            try:
                sel.unregister(x)
            except (KeyError, ValueError):
                pass
            x.close()

    while True:
        events = sel.select(timeout=0.05)
        if frozen:
            for key, _ in events:
                if key.fileobj is lsock:
                    c, _ = lsock.accept()
                    pending.append(c)
            continue
        while pending:
            connect(pending.pop())
        for key, _ in events:
            s = key.fileobj
            if s is lsock:
                c, _ = lsock.accept()
                connect(c)
                continue
            if s not in peer:
                continue
            try:
                data = s.recv(1 << 16)
            except OSError:
                data = b""
            if not data:
                drop(s)
                continue
            try:
                peer[s].setblocking(True)
                peer[s].sendall(data)
                peer[s].setblocking(False)
            except OSError:
                drop(s)


if __name__ == "__main__":
    main()
