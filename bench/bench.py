#!/usr/bin/env python3
"""make bench: the figures that make fcgiwatch worth choosing.

Runs fcgiwatch on generated configs and prints a table, then writes the
figures as JSON (bench/results.json, not kept in git).  Standard library
only.  Services are /bin/sh scripts that announce themselves on a FIFO and
exec sleep, as in ../shared/PEERS.md, so the figures compare with the
daemontools, runit, s6 and supervisord figures measured the same way.

    python3 bench/bench.py                 # everything (about 5 minutes)
    python3 bench/bench.py restart output  # some figures
    BENCH_QUICK=1 python3 bench/bench.py   # shorter runs, rougher figures

Not a test: nothing here asserts a time.
"""

import json
import os
import platform
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PROGRAM = os.path.join(os.path.dirname(HERE), "fcgiwatch.py")
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
from apps import APPS, SOCKET_APP, WSGI_APP, Load  # noqa: E402 (tests' too)
PY = sys.executable
QUICK = bool(os.environ.get("BENCH_QUICK"))
TICK = os.sysconf("SC_CLK_TCK")


def median(values):
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2.0


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def proc_stat(pid):
    with open("/proc/%d/stat" % pid) as handle:
        return handle.read().rsplit(")", 1)[1].split()


def cpu_seconds(pid):
    fields = proc_stat(pid)
    return (int(fields[11]) + int(fields[12])) / float(TICK)


def context_switches(pid):
    total = 0
    with open("/proc/%d/status" % pid) as handle:
        for line in handle:
            if "ctxt_switches" in line:
                total += int(line.split()[1])
    return total


def memory(pid):
    """(RSS MiB, PSS MiB) of one process."""
    values = {}
    with open("/proc/%d/smaps_rollup" % pid) as handle:
        for line in handle:
            parts = line.split()
            if parts and parts[0] in ("Rss:", "Pss:"):
                values[parts[0]] = int(parts[1]) / 1024.0
    return values["Rss:"], values["Pss:"]


class Announcements:
    """A FIFO on which services announce their pid: waited on with select,
    never polled, so a figure is when the new process ran, not when we
    looked."""

    def __init__(self, prefix):
        self.tmp = tempfile.mkdtemp(prefix=prefix)
        os.chmod(self.tmp, 0o755)
        self.fifo = os.path.join(self.tmp, "announce")
        os.mkfifo(self.fifo)
        # O_RDWR: the FIFO never reports EOF between writers.
        self.fifo_fd = os.open(self.fifo, os.O_RDWR | os.O_NONBLOCK)
        self.buffer = b""
        self.pending = []
        self.proc = None

    def announce(self):
        """A service that announces its pid on the FIFO, then sleeps."""
        return "sh -c 'echo $$ > %s; exec sleep 100000'" % self.fifo

    def read_announcements(self, count, timeout=30.0):
        """Wait (select, no polling) for count pids on the FIFO; more that
        came in the same read wait for the next call."""
        deadline = time.monotonic() + timeout
        while len(self.pending) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError("only %d of %d announcements" % (
                    len(self.pending), count))
            ready, _w, _x = select.select([self.fifo_fd], [], [], left)
            if not ready:
                continue
            self.buffer += os.read(self.fifo_fd, 65536)
            *lines, self.buffer = self.buffer.split(b"\n")
            self.pending.extend(int(line) for line in lines if line.strip())
        pids, self.pending = self.pending[:count], self.pending[count:]
        return pids

    def children(self):
        """[(pid, state)] of the supervisor's own children."""
        kids = []
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    fields = proc_stat(int(name))
                except OSError:
                    continue
                if int(fields[1]) == self.proc.pid:
                    kids.append((int(name), fields[0]))
        return kids


class Bench(Announcements):
    """One supervisor on one generated config, in a temporary directory.

    services(bench) returns [(name, {key: value})]; it is given the bench so
    that commands can name its FIFO and directory.
    """

    def __init__(self, services, settings=""):
        Announcements.__init__(self, "fwbench")
        self.conf = os.path.join(self.tmp, "bench.conf")
        with open(self.conf, "w") as handle:
            handle.write("[fcgiwatch]\nstate_dir = %s/state\nsyslog = no\n"
                         % self.tmp)
            handle.write(settings.replace("{tmp}", self.tmp))
            for name, keys in services(self):
                handle.write("\n[%s]\n" % name)
                keys.setdefault("stdout_logfile", "null")
                for key, value in keys.items():
                    handle.write("%s = %s\n" % (key, value))

    def all_up(self):
        doc = self.status()
        return doc is not None and all(e["state"] == "up"
                                       for e in doc["services"])

    def start(self, command=None):
        """command: how fcgiwatch is run (python3 fcgiwatch.py unless
        told otherwise)."""
        self.log = open(os.path.join(self.tmp, "supervisor.log"), "wb")
        self.began = time.monotonic()
        self.proc = subprocess.Popen((command or [PY, PROGRAM]) +
                                     ["-c", self.conf],
                                     stdout=self.log, stderr=self.log)
        return self.proc

    def status(self):
        path = os.path.join(self.tmp, "state", "status.json")
        try:
            with open(path) as handle:
                return json.load(handle)
        except (OSError, ValueError):
            return None

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        os.close(self.fifo_fd)
        self.log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


#: daemontools, measured beside fcgiwatch in the same run where it is
#: installed (Debian's daemontools package): this machine is shared and
#: noisy, so figures are compared as ratios, not as lone times.
SVSCAN = shutil.which("svscan")


class Daemontools(Announcements):
    """svscan over count service directories, each a run script that
    announces itself the same way (as ../shared/PEERS.md measured it)."""

    def __init__(self, count):
        Announcements.__init__(self, "fwdt")
        self.services = os.path.join(self.tmp, "service")
        os.mkdir(self.services)
        for number in range(count):
            directory = os.path.join(self.services, "s%03d" % number)
            os.mkdir(directory)
            run = os.path.join(directory, "run")
            with open(run, "w") as handle:
                handle.write("#!/bin/sh\necho $$ > %s\nexec sleep 100000\n"
                             % self.fifo)
            os.chmod(run, 0o755)

    def start(self):
        self.began = time.monotonic()
        # Its own session: svscan, every supervise and every service share
        # its process group, which stop() kills.
        self.proc = subprocess.Popen(
            [SVSCAN, self.services], stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={"PATH": "/usr/bin:/bin"}, start_new_session=True)
        return self.proc

    def processes(self):
        """svscan and its supervise processes."""
        return [self.proc.pid] + [pid for pid, _state in self.children()]

    def stop(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        os.close(self.fifo_fd)
        shutil.rmtree(self.tmp, ignore_errors=True)


def ratio(mine, theirs):
    return mine / theirs if theirs else None


def wait_until(predicate, timeout=30.0, step=0.01):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out")
        time.sleep(step)


# -- the figures -------------------------------------------------------------

def restart_trials(peer, trials, uptime):
    """SIGKILL a child that has been up uptime seconds; ms until its
    replacement has exec'd and announced itself."""
    pid = peer.read_announcements(1)[0]
    times = []
    for _trial in range(trials):
        time.sleep(uptime)  # the figure is for a child that was up
        began = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        pid = peer.read_announcements(1)[0]
        times.append((time.monotonic() - began) * 1000)
    return times


def summary(trials):
    return {"trials": len(trials), "min_ms": min(trials),
            "median_ms": median(trials), "p90_ms": percentile(trials, 0.9),
            "p99_ms": percentile(trials, 0.99), "max_ms": max(trials)}


def bench_restart():
    trials = 20 if QUICK else 50
    bench = Bench(lambda b: [("svc", {"command": b.announce(),
                                      "startsecs": "0.05"})])
    bench.start()
    result = summary(restart_trials(bench, trials, 0.1))
    bench.stop()
    # The same with socket_pass = systemd: a fork and exec instead of
    # posix_spawn, since LISTEN_PID must be the run's own pid.
    (port,) = free_ports(1)
    bench = Bench(lambda b: [("svc", {
        "command": b.announce(), "startsecs": "0.05",
        "socket": "tcp://127.0.0.1:%d" % port, "socket_pass": "systemd"})])
    bench.start()
    result["socket_pass_systemd"] = summary(restart_trials(bench, trials,
                                                           0.1))
    bench.stop()
    if SVSCAN:
        # supervise waits a second before restarting a child that ran less
        # than one: give its child more than that.
        peer = Daemontools(1)
        peer.start()
        result["daemontools"] = summary(restart_trials(
            peer, 8 if QUICK else 20, 1.1))
        peer.stop()
        result["ratio"] = ratio(result["median_ms"],
                                result["daemontools"]["median_ms"])
    return result


def bench_crash_loop():
    seconds = 8 if QUICK else 20
    bench = Bench(lambda b: [("false", {"command": "/bin/false",
                                        "startsecs": "1"})])
    proc = bench.start()
    time.sleep(seconds)  # the figure is what happens in this time
    with open(os.path.join(bench.tmp, "supervisor.log")) as handle:
        starts = sum(1 for line in handle if "false: spawned" in line)
    cpu = cpu_seconds(proc.pid)
    bench.stop()
    return {"seconds": seconds, "starts": starts, "supervisor_cpu_s": cpu}


def idle_figures(bench, seconds):
    pid = bench.proc.pid
    cpu0, switches0 = cpu_seconds(pid), context_switches(pid)
    time.sleep(seconds)
    return {"seconds": seconds,
            "cpu_ticks": round((cpu_seconds(pid) - cpu0) * TICK),
            "wakeups_per_s": (context_switches(pid) - switches0) /
            float(seconds)}


def free_ports(count):
    """count distinct free ports (apps.free_port gives one at a time:
    two calls may give the same)."""
    sockets, ports = [], []
    for _ in range(count):
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        sockets.append(probe)
        ports.append(probe.getsockname()[1])
    for probe in sockets:
        probe.close()
    return ports


def bench_idle():
    seconds = 10 if QUICK else 30
    result = {}
    # With a metrics file and an alert command: written and run on state
    # changes only, no timer; and log files rotated by age, which needs
    # none either (the age is looked at when a line comes).
    bench = Bench(lambda b: [("s%02d" % i, {
        "command": b.announce(),
        "stdout_logfile": "%s/s%02d.log" % (b.tmp, i),
        "stdout_logfile_maxage": "1d", "stdout_logfile_compress": "true"})
        for i in range(20)],
                  "metrics_file = {tmp}/fcgiwatch.prom\n"
                  "alert_command = true\n")
    bench.start()
    bench.read_announcements(20)
    wait_until(bench.all_up)  # past startsecs: nothing is pending any more
    result["plain"] = idle_figures(bench, seconds)
    bench.stop()
    # The same with a tcp health check each, every 10 s, against a socket
    # the supervisor itself holds (the kernel accepts into its backlog).
    ports = free_ports(20)
    bench = Bench(lambda b: [("s%02d" % i, {
        "command": b.announce(), "socket": "tcp://127.0.0.1:%d" % port,
        "healthcheck": "tcp://127.0.0.1:%d" % port,
        "healthcheck_interval": "10"}) for i, port in enumerate(ports)])
    bench.start()
    bench.read_announcements(20)
    wait_until(bench.all_up)
    result["healthcheck_every_10s"] = idle_figures(bench, seconds)
    bench.stop()
    if SVSCAN:
        peer = Daemontools(20)
        peer.start()
        peer.read_announcements(20)
        time.sleep(2)  # past supervise's first second
        pids = peer.processes()
        switches = sum(context_switches(p) for p in pids)
        time.sleep(seconds)
        result["daemontools_wakeups_per_s"] = (sum(
            context_switches(p) for p in pids) - switches) / float(seconds)
        peer.stop()
    return result


def many(count):
    return Bench(lambda b: [("s%03d" % i, {"command": b.announce()})
                            for i in range(count)])


def bench_memory():
    result = {}
    for count in (20, 200):
        bench = many(count)
        bench.start()
        bench.read_announcements(count)
        wait_until(bench.all_up)
        rss, pss = memory(bench.proc.pid)
        result["services_%d" % count] = {"rss_mib": rss, "pss_mib": pss}
        bench.stop()
    if SVSCAN:
        peer = Daemontools(200)
        peer.start()
        peer.read_announcements(200)
        time.sleep(1)
        result["daemontools_200_pss_mib"] = sum(
            memory(p)[1] for p in peer.processes())
        peer.stop()
    return result


def bench_status():
    """--status of 200 services, and the first child of a one-service
    config: as python3 fcgiwatch.py (compiled from source every time), and
    as the command make install puts in place (cached bytecode)."""
    bench = many(200)
    bench.start()
    bench.read_announcements(200)
    wait_until(bench.all_up)
    prefix = os.path.join(bench.tmp, "prefix")
    installed = subprocess.run(
        ["make", "-s", "-C", os.path.dirname(HERE), "install",
         "PREFIX=" + prefix, "SYSCONFDIR=" + os.path.join(prefix, "etc"),
         "PYTHON=" + PY],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0
    commands = {"script": [PY, PROGRAM]}
    if installed:
        # Run by the interpreter measured (its shebang may name another).
        commands["installed"] = [PY, os.path.join(prefix, "bin",
                                                  "fcgiwatch")]
    times = dict((name, []) for name in commands)
    bare = []
    for _ in range(15):
        began = time.monotonic()
        subprocess.run([PY, "-c", "pass"])
        bare.append((time.monotonic() - began) * 1000)
        for name, command in commands.items():
            began = time.monotonic()
            subprocess.run(command + ["-c", bench.conf, "--status"],
                           stdout=subprocess.DEVNULL)
            times[name].append((time.monotonic() - began) * 1000)
    result = {"services": 200, "python_c_pass_median_ms": median(bare)}
    for name in commands:
        result["%s_median_ms" % name] = median(times[name])
        result["%s_over_bare_start_ms" % name] = (median(times[name]) -
                                                  median(bare))
    for name, command in commands.items():
        firsts = []
        for _ in range(7):
            one = many(1)
            one.start(command)
            one.read_announcements(1)
            firsts.append((time.monotonic() - one.began) * 1000)
            one.stop()
        result["%s_first_child_ms" % name] = median(firsts)
        result["%s_first_child_range_ms" % name] = [min(firsts),
                                                    max(firsts)]
    bench.stop()  # last: the installed command lives in its directory
    return result


def startup_and_mass_death(peer, count):
    """ms from launch to the first and to every child running, then from
    SIGKILL of all of them to all back."""
    began = peer.began
    pids = peer.read_announcements(1)
    first = (time.monotonic() - began) * 1000
    pids += peer.read_announcements(count - 1)
    startup = (time.monotonic() - began) * 1000
    time.sleep(1.1)  # up longer than startsecs, and supervise's second
    began = time.monotonic()
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    peer.read_announcements(count)
    back = (time.monotonic() - began) * 1000
    return {"first_child_ms": first, "startup_200_ms": startup,
            "mass_death_200_back_ms": back}


def bench_mass_death_and_startup():
    bench = many(200)
    bench.start()
    result = startup_and_mass_death(bench, 200)
    wait_until(bench.all_up)
    result["zombies_after"] = sum(1 for _pid, state in bench.children()
                                  if state == "Z")
    began = time.monotonic()
    bench.proc.send_signal(signal.SIGTERM)
    bench.proc.wait(60)
    result["shutdown_200_ms"] = (time.monotonic() - began) * 1000
    bench.stop()
    if SVSCAN:
        peer = Daemontools(200)
        peer.start()
        result["daemontools"] = startup_and_mass_death(peer, 200)
        peer.stop()
        for key in ("first_child_ms", "startup_200_ms",
                    "mass_death_200_back_ms"):
            result[key + "_ratio"] = ratio(result[key],
                                           result["daemontools"][key])
    return result


#: A ready = notify service that says READY=1 at once and execs sleep
#: (perl: a Python start would be most of the figure).
NOTIFY_AT_ONCE = ("perl -MSocket -e 'socket(my $s, PF_UNIX, SOCK_DGRAM, 0); "
                  "send($s, \"READY=1\", 0, pack_sockaddr_un("
                  "$ENV{NOTIFY_SOCKET})); exec(\"sleep\", \"100000\")'")


def time_to_all_up(services, runs):
    """ms from launch until every service is up (the status file says
    so), the median of runs."""
    times = []
    for _ in range(runs):
        bench = Bench(services)
        bench.start()
        wait_until(bench.all_up, timeout=60, step=0.002)
        times.append((time.monotonic() - bench.began) * 1000)
        bench.stop()
    return median(times)


def bench_dependencies():
    """A chain of 10 (each depends_on the one before, ready = notify
    answered at once) against 10 with no dependencies; 200 services, half
    depending on one, against 200 with none (each started once the one is
    ready, in the same turn of the loop)."""
    runs = 3 if QUICK else 7

    def chain(linked):
        def services(bench):
            return [("c%02d" % n, dict(
                {"command": NOTIFY_AT_ONCE, "ready": "notify",
                 "startsecs": "10"},
                **({"depends_on": "c%02d" % (n - 1)} if linked and n
                   else {}))) for n in range(10)]
        return services

    def fan(linked):
        def services(bench):
            return [("s%03d" % n, dict(
                {"command": bench.announce(), "startsecs": "0"},
                **({"depends_on": "s000"} if linked and n % 2 else {})))
                for n in range(200)]
        return services
    result = {"chain_10_ms": time_to_all_up(chain(True), runs),
              "flat_10_ms": time_to_all_up(chain(False), runs),
              "fan_200_ms": time_to_all_up(fan(True), runs),
              "flat_200_ms": time_to_all_up(fan(False), runs)}
    result["chain_ratio"] = result["chain_10_ms"] / result["flat_10_ms"]
    result["fan_ratio"] = result["fan_200_ms"] / result["flat_200_ms"]
    return result


#: Writes SIZE bytes of 128-byte lines to stdout, as fast as it can.
WRITER = """import os
block = (b"x" * 127 + b"\\n") * 8192
left = %d
while left:
    left -= os.write(1, block[:left])
"""

#: What a timestamp adds to each line.
STAMP_BYTES = len("2026-12-02T17:10:26.123+00:00 ")


def bench_output():
    """Output through the supervisor to a file, with and without
    timestamps on its lines."""
    plain = output_figures(False)
    plain["timestamps"] = output_figures(True)
    return plain


def output_figures(timestamps):
    size = (100 if QUICK else 400) * 1024 * 1024
    final = size + (size // 128) * STAMP_BYTES if timestamps else size

    def services(bench):
        writer = os.path.join(bench.tmp, "writer.py")
        with open(writer, "w") as handle:
            handle.write(WRITER % size)
        return [("writer", {"command": "%s %s" % (PY, writer),
                            "stdout_logfile": os.path.join(bench.tmp,
                                                           "out.log"),
                            "stdout_logfile_maxbytes": "0",
                            "stdout_logfile_timestamps": str(timestamps),
                            "autorestart": "false", "startsecs": "0",
                            "autostart": "false"})]
    bench = Bench(services)
    target = os.path.join(bench.tmp, "out.log")
    # The last run's hundreds of megabytes would be written back to disk
    # during this one: a figure of the disk, not of the supervisor.
    os.sync()
    time.sleep(1)
    bench.start()
    wait_until(lambda: bench.status() is not None)
    cpu0 = cpu_seconds(bench.proc.pid)
    began = time.monotonic()
    subprocess.run([PY, PROGRAM, "-c", bench.conf, "--start", "writer"],
                   stdout=subprocess.DEVNULL)
    wait_until(lambda: os.path.exists(target) and
               os.path.getsize(target) >= final, timeout=120, step=0.005)
    elapsed = time.monotonic() - began
    cpu = cpu_seconds(bench.proc.pid) - cpu0
    bench.stop()
    return {"megabytes": size >> 20, "mb_per_s": (size >> 20) / elapsed,
            "supervisor_cpu_s": cpu,
            "supervisor_cpu_per_100mb_s": cpu * 100.0 / (size >> 20)}


def bench_deploy():
    """--restart of an app with a 2 s start-up on a held socket, under a
    steady client: the longest request, as a share of the start-up."""
    startup = 2.0
    (port,) = free_ports(1)

    def services(bench):
        app = os.path.join(bench.tmp, "app.py")
        with open(app, "w") as handle:
            handle.write(SOCKET_APP)
        return [("app", {"command": "%s %s %s" % (PY, app, startup),
                         "socket": "tcp://127.0.0.1:%d" % port,
                         "startsecs": str(startup + 0.5)})]
    return deploys_under_load(Bench(services), "app", port, startup)


def deploys_under_load(bench, name, port, startup, http=False):
    """Start bench, then --restart name (5 times) under a steady client on
    port: the longest request, as a share of the start-up, and failures."""
    bench.start()
    wait_until(bench.all_up, timeout=60)
    load = Load(port, pause=0, http=http)
    restarts = 2 if QUICK else 5
    try:
        for _ in range(restarts):
            subprocess.run([PY, PROGRAM, "-c", bench.conf, "--restart",
                            name], stdout=subprocess.DEVNULL, timeout=120)
    finally:
        load.stop()
        bench.stop()
    return {"startup_s": startup, "restarts": restarts,
            "requests": load.count, "failed": len(load.failures),
            "longest_ms": load.longest * 1000,
            "longest_to_startup": load.longest / startup}


def bench_appserver():
    """gunicorn on a held socket (socket_pass = systemd, --preload, ready =
    notify) with an app that takes 1 s to start: --restarts under a steady
    HTTP client.  Needs the app servers .ci/run installs in APPS."""
    gunicorn = os.path.join(APPS, "bin", "gunicorn")
    if not os.access(gunicorn, os.X_OK):
        return {"missing": gunicorn}
    startup = 1.0
    (port,) = free_ports(1)

    def services(bench):
        with open(os.path.join(bench.tmp, "wsgiapp.py"), "w") as handle:
            handle.write(WSGI_APP)
        return [("web", {
            "command": "%s --chdir %s --preload --workers 2 wsgiapp" % (
                gunicorn, bench.tmp),
            "socket": "tcp://127.0.0.1:%d" % port, "socket_pass": "systemd",
            "ready": "notify", "startsecs": "30", "user": "nobody",
            "environment": "STARTUP=%s" % startup})]
    return deploys_under_load(Bench(services), "web", port, startup,
                              http=True)


def churn(bench, pids, seconds, rate):
    """SIGKILL a random service's child rate times a second, for seconds:
    the restart latency of each (ms), and the supervisor's CPU meanwhile,
    as a share of one core.  A child younger than a second is left alone
    (a run killed at once would be backed off, rightly)."""
    import random
    rng = random.Random(7)
    time.sleep(1.1)  # the first children too are a second old
    born = dict((pid, 0.0) for pid in pids)
    cpu_before, began = cpu_seconds(bench.proc.pid), time.monotonic()
    times = []
    for number in range(int(seconds * rate)):
        time.sleep(max(0.0, began + number / rate - time.monotonic()))
        now = time.monotonic()
        victims = [pid for pid, at in born.items() if now - at > 1.0]
        victim = victims[rng.randrange(len(victims))]
        del born[victim]
        killed = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        new = bench.read_announcements(1)[0]
        times.append((time.monotonic() - killed) * 1000)
        born[new] = time.monotonic()
    share = (cpu_seconds(bench.proc.pid) - cpu_before) / (
        time.monotonic() - began)
    return {"kills": len(times), "median_ms": median(times),
            "p99_ms": percentile(times, 0.99), "cpu_share": share}


def bench_scale():
    """Thousands of services: start-up, --start all's first line, restart
    latency and the supervisor's CPU under churn (10 kills a second) at
    3,000 against 100, and memory at 1,000 against daemontools."""
    big = 1000 if QUICK else 3000
    seconds = 4 if QUICK else 10
    result = {"services": big}
    for count in (100, big):
        bench = Bench(lambda b: [("s%04d" % i, {
            "command": b.announce(), "startsecs": "0"})
            for i in range(count)])
        bench.start([PY, "-S", "-c", "import sys; sys.path.insert(0, %r); "
                     "from fcgiwatch import main; sys.exit(main())"
                     % os.path.dirname(HERE)])
        pids = bench.read_announcements(count, timeout=120)
        started = (time.monotonic() - bench.began) * 1000
        wait_until(bench.all_up, timeout=60)
        figures = churn(bench, pids, seconds, 10)
        if count == big:
            figures["startup_ms"] = started
            # --stop all, then --start all: how soon its first line comes.
            subprocess.run([PY, PROGRAM, "-c", bench.conf, "--stop", "all"],
                           stdout=subprocess.DEVNULL, timeout=300)
            bench.pending, bench.buffer = [], b""
            began = time.monotonic()
            start = subprocess.Popen([PY, PROGRAM, "-c", bench.conf,
                                      "--start", "all"],
                                     stdout=subprocess.PIPE)
            start.stdout.readline()
            figures["start_all_first_line_ms"] = (
                time.monotonic() - began) * 1000
            start.stdout.read()
            start.wait(300)
            figures["start_all_done_ms"] = (time.monotonic() - began) * 1000
        result["at_%d" % count] = figures
        bench.stop()
    result["latency_ratio"] = ratio(result["at_%d" % big]["median_ms"],
                                    result["at_100"]["median_ms"])
    bench = Bench(lambda b: [("s%04d" % i, {"command": b.announce()})
                             for i in range(1000)])
    bench.start()
    bench.read_announcements(1000, timeout=120)
    wait_until(bench.all_up, timeout=60)
    result["memory_1000_pss_mib"] = memory(bench.proc.pid)[1]
    bench.stop()
    if SVSCAN:
        peer = Daemontools(1000)
        peer.start()
        peer.read_announcements(1000, timeout=120)
        time.sleep(1)
        result["daemontools_1000_pss_mib"] = sum(
            memory(p)[1] for p in peer.processes())
        peer.stop()
        result["memory_1000_ratio"] = ratio(
            result["memory_1000_pss_mib"], result["daemontools_1000_pss_mib"])
    return result


RPC_SETTINGS = """
[unix_http_server]
file = {tmp}/supervisor.sock
[supervisorctl]
serverurl = unix://{tmp}/supervisor.sock
"""


def rpc_poller(path, stop):
    """A monitoring client: getAllProcessInfo ten times a second over the
    unix socket, as Datadog's check or an exporter does, in a thread."""
    import http.client
    import threading
    import xmlrpc.client

    class Connection(http.client.HTTPConnection):
        def connect(self):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.connect(path)

    class Transport(xmlrpc.client.Transport):
        def make_connection(self, host):
            return Connection("localhost")
    calls = []

    def poll():
        proxy = xmlrpc.client.ServerProxy("http://localhost",
                                          transport=Transport())
        while not stop.is_set():
            began = time.monotonic()
            proxy.supervisor.getAllProcessInfo()
            calls.append((time.monotonic() - began) * 1000)
            stop.wait(0.1)
    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    return thread, calls


def bench_supervisorctl():
    """supervisorctl status of 20 services, against fcgiwatch and against
    supervisord (the venv of .ci/run has both supervisorctl and
    supervisord); restart latency while a client polls getAllProcessInfo
    ten times a second, against the same config left alone."""
    import threading
    ctl = os.path.join(APPS, "bin", "supervisorctl")
    if not os.access(ctl, os.X_OK):
        return {"skipped": "supervisorctl is not in %s (see .ci/run)" % APPS}
    runs = 7 if QUICK else 15

    def status_times(conf):
        times = []
        for _ in range(runs):
            began = time.monotonic()
            subprocess.run([ctl, "-c", conf, "status"],
                           stdout=subprocess.DEVNULL)
            times.append((time.monotonic() - began) * 1000)
        return median(times)
    bench = Bench(lambda b: [("s%03d" % i, {"command": b.announce()})
                             for i in range(20)], RPC_SETTINGS)
    bench.start()
    bench.read_announcements(20)
    wait_until(bench.all_up)
    result = {"services": 20, "status_ms": status_times(bench.conf),
              "pss_mib": memory(bench.proc.pid)[1]}
    bench.stop()
    daemon = os.path.join(APPS, "bin", "supervisord")
    if os.access(daemon, os.X_OK):
        tmp = tempfile.mkdtemp(prefix="fwsvd")
        conf = os.path.join(tmp, "supervisord.conf")
        with open(conf, "w") as handle:
            handle.write(RPC_SETTINGS.replace("{tmp}", tmp))
            handle.write("[supervisord]\nlogfile = %s/supervisord.log\n"
                         "pidfile = %s/supervisord.pid\nnodaemon = true\n"
                         "[rpcinterface:supervisor]\n"
                         "supervisor.rpcinterface_factory = supervisor."
                         "rpcinterface:make_main_rpcinterface\n" % (tmp, tmp))
            for i in range(20):
                handle.write("[program:s%03d]\ncommand = sleep 1000\n" % i)
        peer = subprocess.Popen([daemon, "-c", conf],
                                stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        wait_until(lambda: subprocess.run(
            [ctl, "-c", conf, "status"], stdout=subprocess.DEVNULL)
                   .returncode == 0, 30, 0.2)
        result["supervisord_status_ms"] = status_times(conf)
        result["supervisord_pss_mib"] = memory(peer.pid)[1]
        peer.send_signal(signal.SIGTERM)
        peer.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)
    trials = 20 if QUICK else 40
    bench = Bench(lambda b: [("svc", {"command": b.announce(),
                                      "startsecs": "0.05"})], RPC_SETTINGS)
    bench.start()
    result["restart_idle"] = summary(restart_trials(bench, trials, 0.1))
    stop = threading.Event()
    thread, calls = rpc_poller(os.path.join(bench.tmp, "supervisor.sock"),
                               stop)
    # restart_trials starts from an announcement: the next run's.
    wait_until(bench.all_up)
    os.kill(bench.status()["services"][0]["pid"], signal.SIGKILL)
    result["restart_polled"] = summary(restart_trials(bench, trials, 0.1))
    stop.set()
    thread.join(5)
    result["poll_calls"] = len(calls)
    result["poll_median_ms"] = median(calls) if calls else None
    bench.stop()
    return result


FIGURES = [
    ("restart", bench_restart),
    ("crash_loop", bench_crash_loop),
    ("idle", bench_idle),
    ("memory", bench_memory),
    ("status", bench_status),
    ("mass", bench_mass_death_and_startup),
    ("output", bench_output),
    ("deploy", bench_deploy),
    ("dependencies", bench_dependencies),
    ("appserver", bench_appserver),
    ("scale", bench_scale),
    ("supervisorctl", bench_supervisorctl),
]


def machine():
    with open("/proc/cpuinfo") as handle:
        model = next((line.split(":", 1)[1].strip() for line in handle
                      if line.startswith("model name")), "?")
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "cores": os.cpu_count(), "cpu": model,
            "kernel": platform.release(),
            "python": platform.python_version(), "interpreter": PY}


def versus(mine, peer, ratio_value, unit="ms", digits=1):
    """'1.4 ms; daemontools 3.1 ms: 0.45 x' (or just the first part)."""
    text = "%.*f %s" % (digits, mine, unit)
    if peer is not None:
        text += "; daemontools %.*f %s: %.2f x" % (digits, peer, unit,
                                                   ratio_value)
    return text


def report(results):
    rows = []

    def row(what, value, target):
        rows.append((what, value, target))

    if "restart" in results:
        r = results["restart"]
        peer = r.get("daemontools")
        row("restart latency after SIGKILL, median",
            versus(r["median_ms"], peer and peer["median_ms"],
                   r.get("ratio"), digits=2) +
            " (fcgiwatch min %.2f, p90 %.2f, p99 %.2f, max %.2f, n=%d)" % (
                r["min_ms"], r["p90_ms"], r["p99_ms"], r["max_ms"],
                r["trials"]),
            "<= 0.8 x daemontools; p99 < 10 ms")
        s = r.get("socket_pass_systemd")
        if s:
            row("the same, socket_pass = systemd (fork, then exec), median",
                "%.2f ms; plain %.2f ms: %.2f x (p99 %.2f)" % (
                    s["median_ms"], r["median_ms"],
                    s["median_ms"] / r["median_ms"], s["p99_ms"]),
                "p99 < 10 ms")
    if "crash_loop" in results:
        r = results["crash_loop"]
        row("crash loop (/bin/false) for %d s: starts, supervisor CPU s"
            % r["seconds"], "%d, %.2f" % (r["starts"], r["supervisor_cpu_s"]),
            "backed off 1, 2, 4 ... s; never given up")
    if "idle" in results:
        r = results["idle"]
        peer = r.get("daemontools_wakeups_per_s")
        row("idle, 20 services, metrics_file, alert_command, daily log "
            "files: wake-ups/s, CPU ticks in %d s"
            % r["plain"]["seconds"], "%.2f, %d%s" % (
                r["plain"]["wakeups_per_s"], r["plain"]["cpu_ticks"],
                "" if peer is None else "; daemontools %.2f/s" % peer), "0")
        h = r["healthcheck_every_10s"]
        row("idle, 20 services with a tcp check every 10 s: wake-ups/s",
            "%.2f, %d ticks" % (h["wakeups_per_s"], h["cpu_ticks"]),
            "one probe a service an interval; probes due together "
            "share a wake-up")
    if "memory" in results:
        m = results["memory"]
        for count in (20, 200):
            r = m["services_%d" % count]
            peer = m.get("daemontools_200_pss_mib") if count == 200 else None
            row("memory, %d services: RSS, PSS MiB" % count,
                "%.1f, %.1f%s" % (r["rss_mib"], r["pss_mib"],
                                  "" if peer is None else
                                  "; daemontools PSS %.1f" % peer),
                "PSS < 12 at 200" if count == 200 else "")
    if "status" in results:
        r = results["status"]
        for name, how in (("installed", "make install's fcgiwatch"),
                          ("script", "python3 fcgiwatch.py")):
            if "%s_median_ms" % name in r:
                row("--status of 200 services, %s, median ms" % how,
                    "%.1f (python3 -c pass: %.1f; over it: %.1f)" % (
                        r["%s_median_ms" % name],
                        r["python_c_pass_median_ms"],
                        r["%s_over_bare_start_ms" % name]),
                    "within 10 of the bare start")
        for name, how in (("installed", "make install's fcgiwatch"),
                          ("script", "python3 fcgiwatch.py")):
            if "%s_first_child_ms" % name in r:
                row("start-up of 1 service, %s: first child, median ms"
                    % how, "%.0f (%.0f-%.0f)" % (
                        (r["%s_first_child_ms" % name],) +
                        tuple(r["%s_first_child_range_ms" % name])),
                    "< 150 ms")
    if "mass" in results:
        r = results["mass"]
        peer = r.get("daemontools") or {}
        for key, what, goal in (
                ("first_child_ms", "start-up: first child running",
                 "< 150 ms"),
                ("startup_200_ms", "start-up of 200: all running",
                 "<= 0.8 x daemontools"),
                ("mass_death_200_back_ms", "200 SIGKILLed at once: all back",
                 "<= 0.8 x daemontools")):
            row(what, versus(r[key], peer.get(key), r.get(key + "_ratio"),
                             digits=0), goal)
        row("zombies after the mass death; shutdown of 200, ms",
            "%d; %.0f" % (r["zombies_after"], r["shutdown_200_ms"]), "0")
    if "output" in results:
        r = results["output"]
        row("output through the supervisor to a file, MB/s",
            "%.0f (%d MB of 128-byte lines; supervisor CPU %.2f s per "
            "100 MB)" % (r["mb_per_s"], r["megabytes"],
                         r["supervisor_cpu_per_100mb_s"]), ">= 100")
        t = r.get("timestamps")
        if t:
            row("the same with stdout_logfile_timestamps, MB/s",
                "%.0f (supervisor CPU %.2f s per 100 MB)" % (
                    t["mb_per_s"], t["supervisor_cpu_per_100mb_s"]),
                ">= 100")
    if "deploy" in results:
        r = results["deploy"]
        row("--restart under load, app with a %.0f s start-up: longest "
            "request / start-up" % r["startup_s"],
            "%.3f (%.0f ms; %d restarts, %d requests, %d failed)" % (
                r["longest_to_startup"], r["longest_ms"], r["restarts"],
                r["requests"], r["failed"]), "< 0.05; 0 failed")
    if "dependencies" in results:
        r = results["dependencies"]
        row("a chain of 10 (depends_on, READY=1 at once): all up, vs 10 "
            "with none", "%.0f ms vs %.0f ms: %.2f x" % (
                r["chain_10_ms"], r["flat_10_ms"], r["chain_ratio"]),
            "< 1.5 x")
        row("200 services, half depending on one: all up, vs none",
            "%.0f ms vs %.0f ms: %.2f x" % (
                r["fan_200_ms"], r["flat_200_ms"], r["fan_ratio"]),
            "< 1.2 x")
    if "appserver" in results:
        r = results["appserver"]
        if "missing" in r:
            row("gunicorn deploys", "not measured: %s is missing "
                "(.ci/run installs it)" % r["missing"], "")
        else:
            row("gunicorn (socket_pass = systemd), --restart under load: "
                "longest request / start-up",
                "%.3f (%.0f ms; %d restarts of an app with a %.0f s "
                "start-up, %d requests, %d failed)" % (
                    r["longest_to_startup"], r["longest_ms"], r["restarts"],
                    r["startup_s"], r["requests"], r["failed"]),
                "< 0.05; 0 failed")
    if "scale" in results:
        r = results["scale"]
        big, small = r["at_%d" % r["services"]], r["at_100"]
        row("%d services: start-up, all running" % r["services"],
            "%.0f ms" % big["startup_ms"], "< 3000 ms at 3,000")
        row("%d services: --start all (after --stop all), first line; all"
            % r["services"], "%.0f ms; %.0f ms" % (
                big["start_all_first_line_ms"], big["start_all_done_ms"]),
            "first line < 1000 ms")
        row("restart under churn (10 kills/s), median at %d vs 100"
            % r["services"], "%.2f ms vs %.2f ms: %.2f x (p99 %.1f vs %.1f)"
            % (big["median_ms"], small["median_ms"], r["latency_ratio"],
               big["p99_ms"], small["p99_ms"]), "< 1.5 x")
        row("supervisor CPU under that churn, at %d; at 100"
            % r["services"], "%.0f %%; %.0f %% of a core" % (
                big["cpu_share"] * 100, small["cpu_share"] * 100),
            "< 15 %")
        row("memory, 1,000 services: PSS MiB", "%.1f%s" % (
            r["memory_1000_pss_mib"],
            "" if "daemontools_1000_pss_mib" not in r else
            "; daemontools %.1f: %.2f x" % (r["daemontools_1000_pss_mib"],
                                            r["memory_1000_ratio"])), "")
    if "supervisorctl" in results and "skipped" not in results[
            "supervisorctl"]:
        r = results["supervisorctl"]
        row("supervisorctl status, %d services, median" % r["services"],
            "%.0f ms%s" % (r["status_ms"], "" if "supervisord_status_ms" not
                           in r else "; supervisord %.0f ms: %.2f x" % (
                               r["supervisord_status_ms"], r["status_ms"] /
                               r["supervisord_status_ms"])),
            "no slower than supervisord")
        row("the supervisor's PSS, serving it", "%.1f MiB%s" % (
            r["pss_mib"], "" if "supervisord_pss_mib" not in r else
            "; supervisord %.1f MiB" % r["supervisord_pss_mib"]), "")
        row("restart latency while getAllProcessInfo is polled 10/s, "
            "median", "%.2f ms; idle %.2f ms: %.2f x (p99 %.2f vs %.2f; "
            "%d calls, %.1f ms each)" % (
                r["restart_polled"]["median_ms"],
                r["restart_idle"]["median_ms"],
                r["restart_polled"]["median_ms"] /
                r["restart_idle"]["median_ms"], r["restart_polled"]["p99_ms"],
                r["restart_idle"]["p99_ms"], r["poll_calls"],
                r["poll_median_ms"] or 0), "no worse than idle")
    width = max(len(r[0]) for r in rows)
    info = results["machine"]
    print("fcgiwatch bench, %s; %d cores (%s), kernel %s, Python %s%s" % (
        info["date"], info["cores"], info["cpu"], info["kernel"],
        info["python"], "; daemontools beside it" if SVSCAN else
        "; daemontools not installed (apt-get install daemontools)"))
    for what, value, target in rows:
        print("  %-*s  %s%s" % (width, what, value,
                                "   [goal: %s]" % target if target else ""))


def main(argv):
    chosen = [name for name, _f in FIGURES if not argv or name in argv]
    unknown = [a for a in argv if a not in dict(FIGURES)]
    if unknown:
        sys.stderr.write("unknown figure(s): %s; choose from %s\n" % (
            " ".join(unknown), " ".join(n for n, _f in FIGURES)))
        return 2
    results = {"machine": machine()}
    for name, function in FIGURES:
        if name in chosen:
            sys.stderr.write("bench: %s...\n" % name)
            results[name] = function()
    report(results)
    path = os.path.join(HERE, "results.json")
    with open(path, "w") as handle:
        json.dump(results, handle, indent=1)
    print("figures written to %s" % path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
