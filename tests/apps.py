"""What the tests and the bench run against fcgiwatch: one app that serves
a held socket, and one load generator.  Standard library only.

SOCKET_APP serves the listening socket it was given as fd 0 (a held
socket): it takes argv[1] seconds to start, exits 1 at once where the file
argv[2] exists (a broken deploy), answers each connection with its pid,
and on TERM finishes the connection in hand (what a graceful FastCGI
server does).  Load runs clients against a port in a thread and notes
every answer.
"""

import socket
import threading
import time

SOCKET_APP = r"""
import os, select, signal, socket, sys, time
if len(sys.argv) > 2 and os.path.exists(sys.argv[2]):
    sys.exit(1)
time.sleep(float(sys.argv[1]))
server = socket.fromfd(0, socket.AF_INET, socket.SOCK_STREAM)
server.setblocking(False)
wake_read, wake_write = os.pipe()
os.set_blocking(wake_write, False)
signal.set_wakeup_fd(wake_write)
stop = []
signal.signal(signal.SIGTERM, lambda number, frame: stop.append(number))
while not stop:
    if server not in select.select([server, wake_read], [], [])[0]:
        continue
    try:
        conn, _ = server.accept()
    except BlockingIOError:
        continue
    conn.setblocking(True)
    try:
        conn.recv(16)
        conn.sendall(b"%d\n" % os.getpid())
    except OSError:
        pass
    conn.close()
"""


def free_port():
    """A loopback TCP port nobody listens on right now."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return port


class Load:
    """Clients in a thread, one request after another (pause seconds
    apart), until stopped.  answers: pid -> count; failures: what went
    wrong; times: (start, duration, pid or None) of every request;
    longest: the longest request, in seconds."""

    def __init__(self, port, pause=0.005):
        self.port, self.pause = port, pause
        self.answers = {}
        self.failures = []
        self.times = []
        self.longest = 0.0
        self.running = True
        self.thread = threading.Thread(target=self.loop)
        self.thread.daemon = True
        self.thread.start()

    @property
    def count(self):
        return len(self.times)

    def request(self):
        client = socket.create_connection(("127.0.0.1", self.port), 10)
        try:
            client.settimeout(10)
            client.sendall(b"GET\n")
            data = b""
            while True:
                chunk = client.recv(64)
                if not chunk:
                    return int(data)
                data += chunk
        finally:
            client.close()

    def loop(self):
        while self.running:
            began = time.monotonic()
            pid = None
            try:
                pid = self.request()
                self.answers[pid] = self.answers.get(pid, 0) + 1
            except (OSError, ValueError) as exc:
                self.failures.append(repr(exc))
            took = time.monotonic() - began
            self.times.append((began, took, pid))
            self.longest = max(self.longest, took)
            if self.pause:
                time.sleep(self.pause)

    def served_by(self, pid, start, end):
        """How many requests pid answered that began between start and
        end (monotonic times)."""
        return sum(1 for began, _took, by in self.times
                   if by == pid and start <= began <= end)

    def stop(self):
        self.running = False
        self.thread.join(15)
