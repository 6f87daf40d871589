"""What the tests and the bench run against fcgiwatch: one app that serves
a held socket, and one load generator.  Standard library only.

SOCKET_APP serves the listening socket it was given as fd 0 (a held
socket): it takes argv[1] seconds to start, exits 1 at once where the file
argv[2] exists (a broken deploy), answers each connection with its pid,
and on TERM finishes the connection in hand (what a graceful FastCGI
server does); SYSTEMD_APP does the same with the sockets systemd's way
(fds 3, 4 ...).  WSGI_APP and ASGI_APP are what the real app servers
(installed in APPS by .ci/run) run.  Load runs clients against a port in
a thread (raw, or HTTP for the real app servers) and notes every answer.
"""

import os
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


#: The same app, given its sockets the systemd way: fds 3, 4 ... with
#: LISTEN_FDS, and LISTEN_PID, which must be its own pid (as gunicorn,
#: Twisted and go-systemd check).  argv[1]: seconds to start.  It answers
#: "GET /..." in HTTP too (for an http:// health check), and takes 64 MB
#: once the file $GROW names its pid.
SYSTEMD_APP = r"""
import os, select, signal, socket, sys, time
time.sleep(float(sys.argv[1]))
if os.environ.get("LISTEN_PID") != str(os.getpid()):
    sys.exit("LISTEN_PID is %r, not my pid" % os.environ.get("LISTEN_PID"))

def held(fd):
    family = socket.socket(fileno=os.dup(fd)).family if sys.version_info >= (
        3, 7) else socket.fromfd(fd, socket.AF_INET, socket.SOCK_STREAM
                                 ).getsockopt(socket.SOL_SOCKET, 39)
    return socket.fromfd(fd, family, socket.SOCK_STREAM)

servers = [held(3 + n) for n in range(int(os.environ["LISTEN_FDS"]))]
for server in servers:
    server.setblocking(False)
wake_read, wake_write = os.pipe()
os.set_blocking(wake_write, False)
signal.set_wakeup_fd(wake_write)
stop = []
signal.signal(signal.SIGTERM, lambda number, frame: stop.append(number))
grow, hog = os.environ.get("GROW"), None
while not stop:
    if grow and hog is None and os.path.exists(grow):
        with open(grow) as handle:
            if handle.read().strip() == str(os.getpid()):
                hog = bytearray(64 * 1024 * 1024)
                for i in range(0, len(hog), 4096):
                    hog[i] = 1
    ready = select.select(servers + [wake_read], [], [],
                          0.05 if grow else None)[0]
    for server in ready:
        if server == wake_read:
            continue
        try:
            conn, _ = server.accept()
        except BlockingIOError:
            continue
        conn.setblocking(True)
        try:
            data = conn.recv(4096)
            if data.startswith(b"GET /"):
                while b"\r\n\r\n" not in data:
                    more = conn.recv(4096)
                    if not more:
                        break
                    data += more
                conn.sendall(b"HTTP/1.0 200 OK\r\n\r\n")
            conn.sendall(b"%d\n" % os.getpid())
        except OSError:
            pass
        conn.close()
"""


#: What the real app servers run: a WSGI app and an ASGI app that take
#: STARTUP seconds to import (a web app's imports, its database
#: connections) and answer each request with their pid.
WSGI_APP = """
import os, time
time.sleep(float(os.environ.get("STARTUP", "0")))

def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"%d\\n" % os.getpid()]
"""

ASGI_APP = """
import os, time
time.sleep(float(os.environ.get("STARTUP", "0")))

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body",
                "body": b"%d\\n" % os.getpid()})
"""

#: Where .ci/run installs the app servers (gunicorn, uvicorn, Twisted): a
#: virtual environment any user may read, so that they run as nobody.
APPS = os.environ.get("FWTEST_APPS", "/opt/fwtest-apps")


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

    def __init__(self, port, pause=0.005, http=False):
        self.port, self.pause, self.http = port, pause, http
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
        """One request: the pid that answered.  With http, an HTTP/1.0 GET
        whose answer must be 200 with the pid as its body."""
        client = socket.create_connection(("127.0.0.1", self.port), 10)
        try:
            client.settimeout(10)
            client.sendall(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n"
                           if self.http else b"GET\n")
            data = b""
            while True:
                chunk = client.recv(4096)
                if not chunk:
                    break
                data += chunk
        finally:
            client.close()
        if self.http:
            head, _sep, data = data.partition(b"\r\n\r\n")
            if head.split(b" ")[1:2] != [b"200"]:
                raise ValueError("answered %r" % head[:40])
        return int(data)

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
