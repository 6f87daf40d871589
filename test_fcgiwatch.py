#!/usr/bin/env python3
"""Tests for fcgiwatch: standard-library unittest, real processes.

Run as root (the privilege tests switch to user nobody):

    python3 test_fcgiwatch.py            # all
    python3 test_fcgiwatch.py -k Reload  # some

Every test that starts a supervisor stops it, and checks that no process it
started is left (each service carries FWTEST_MARK=<its temp dir> in its
environment, which is how leftovers are found).  Waiting is always for a
condition with a deadline, never a bare sleep.
"""

import doctest
import errno
import hashlib
import json
import os
import pwd
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import fcgiwatch  # noqa: E402

PROGRAM = os.path.join(HERE, "fcgiwatch.py")
PY = sys.executable
IS_ROOT = os.geteuid() == 0
NOBODY = pwd.getpwnam("nobody") if IS_ROOT else None


def as_user(user):
    """A preexec_fn that drops to user (tests run as root)."""
    def drop():
        os.setgroups([])
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)
    return drop


def interpreter_for(user):
    """A Python that user may run: ours, or the system's when ours lives
    somewhere they cannot reach (pyenv under /root).  None when neither."""
    for candidate in (PY, "/usr/bin/python3"):
        try:
            subprocess.run([candidate, "-c", "pass"], preexec_fn=as_user(user),
                           stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, check=True, timeout=30)
            return candidate
        except (OSError, subprocess.SubprocessError):
            continue
    return None


NOBODY_PY = interpreter_for(NOBODY) if IS_ROOT else None


def wait_for(predicate, timeout=5.0, what="condition", interval=0.005):
    """Poll predicate until it returns something true, or fail saying what
    it last returned."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.1f s waiting for %s "
                                 "(last: %r)" % (timeout, what, last))
        time.sleep(interval)


def py(code):
    """A service command running Python code (dedented)."""
    return "%s -c %s" % (shlex.quote(PY), shlex.quote(
        textwrap.dedent(code).strip()))


def proc_status(pid):
    """/proc/PID/status as a dict, or None when the process is gone."""
    try:
        with open("/proc/%d/status" % pid) as handle:
            return dict(line.rstrip("\n").split(":\t", 1)
                        for line in handle if ":\t" in line)
    except OSError:
        return None


def proc_stat(pid):
    try:
        with open("/proc/%d/stat" % pid, "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    return data[data.rfind(b")") + 2:].split()


def is_alive(pid):
    fields = proc_stat(pid)
    return fields is not None and fields[0] != b"Z"


def processes_with(marker):
    """Live pids whose environment or command line holds marker."""
    found = []
    needle = marker.encode()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        pid = int(name)
        for what in ("environ", "cmdline"):
            try:
                with open("/proc/%s/%s" % (name, what), "rb") as handle:
                    if needle in handle.read():
                        if is_alive(pid):
                            found.append(pid)
                        break
            except OSError:
                break
    return sorted(set(found))


def children_of(pid):
    kids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = proc_stat(int(name))
            if fields and int(fields[1]) == pid:
                kids.append((int(name), fields[0].decode()))
    return kids


# ---------------------------------------------------------------------------
# Pure functions: strings in, values out
# ---------------------------------------------------------------------------

class DocTests(unittest.TestCase):
    def test_docstring_examples(self):
        failures, tried = doctest.testmod(fcgiwatch)
        self.assertGreater(tried, 10)
        self.assertEqual(failures, 0)


class ConverterTests(unittest.TestCase):
    def test_bool(self):
        self.assertIs(fcgiwatch.to_bool(" TRUE "), True)
        self.assertIs(fcgiwatch.to_bool("no"), False)
        with self.assertRaisesRegex(ValueError, "'maybe' is not a boolean"):
            fcgiwatch.to_bool("maybe")

    def test_seconds(self):
        self.assertEqual(fcgiwatch.to_seconds("0.25"), 0.25)
        self.assertEqual(fcgiwatch.to_seconds("3s"), 3)
        for bad in ("-1", "soon", "nan", "inf", ""):
            with self.assertRaises(ValueError):
                fcgiwatch.to_seconds(bad)

    def test_octal_and_signal(self):
        self.assertEqual(fcgiwatch.to_octal("027"), 0o27)
        self.assertEqual(fcgiwatch.to_octal("0o750"), 0o750)
        self.assertRaises(ValueError, fcgiwatch.to_octal, "089")
        self.assertEqual(fcgiwatch.to_signal("sigterm"), signal.SIGTERM)
        self.assertEqual(fcgiwatch.to_signal("9"), signal.SIGKILL)
        for bad in ("SIG_DFL", "FOO", "0", "999", "NSIG"):
            self.assertRaises(ValueError, fcgiwatch.to_signal, bad)

    def test_exitcodes_sizes_retries(self):
        self.assertEqual(fcgiwatch.to_exitcodes("2, 0,2"), (0, 2))
        self.assertRaises(ValueError, fcgiwatch.to_exitcodes, "256")
        self.assertRaises(ValueError, fcgiwatch.to_exitcodes, " , ")
        self.assertEqual(fcgiwatch.to_byte_size("1GB"), 1 << 30)
        self.assertRaises(ValueError, fcgiwatch.to_byte_size, "ten")
        self.assertIsNone(fcgiwatch.to_retries("forever"))
        self.assertEqual(fcgiwatch.to_retries("3"), 3)

    def test_environment(self):
        self.assertEqual(fcgiwatch.to_environment(
            "A=1,B='two, three'\nC = x y "),
            (("A", "1"), ("B", "two, three"), ("C", "x y")))
        self.assertRaises(ValueError, fcgiwatch.to_environment, "A=1,=2")
        self.assertRaises(ValueError, fcgiwatch.to_environment, 'A="1')
        self.assertRaises(ValueError, fcgiwatch.to_environment, "1A=1")

    def test_urls(self):
        self.assertEqual(fcgiwatch.split_url("http://[::1]:80/x", ("http",)),
                         ("http", "::1", 80, "/x"))
        for bad in ("fcgi://host", "fcgi://:80", "fcgi://h:0", "ftp://h:1",
                    "fcgi://h:99999", "fcgi:/"):
            self.assertRaises(ValueError, fcgiwatch.split_url, bad,
                              ("fcgi",))
        self.assertEqual(fcgiwatch.to_healthcheck("http://127.0.0.1:8000")
                         .path, "/")
        self.assertRaises(ValueError, fcgiwatch.to_healthcheck,
                          "tcp:///run/x.sock")
        self.assertRaises(ValueError, fcgiwatch.to_socket,
                          "tcp://127.0.0.1:1/path")

    def test_wait_status(self):
        self.assertEqual(fcgiwatch.decode_wait_status(3 << 8),
                         (3, None, "exited 3"))
        self.assertEqual(fcgiwatch.decode_wait_status(signal.SIGTERM)[1],
                         "TERM")

    def test_backoff_and_decision(self):
        self.assertEqual([fcgiwatch.backoff_delay(n, 60) for n in range(9)],
                         [0, 1, 2, 4, 8, 16, 32, 60, 60])
        self.assertEqual(fcgiwatch.backoff_delay(500, 60), 60)
        config = parse("[a]\ncommand=x\nstartretries=2\n").services[0]
        decide = fcgiwatch.restart_decision
        self.assertEqual(decide(config, 1, False, 0), ("restart", 0))
        self.assertEqual(decide(config, 1, True, 1), ("restart", 1))
        self.assertEqual(decide(config, 1, True, 2), ("restart", 2))
        self.assertEqual(decide(config, 1, True, 3), ("fatal", None))
        unexpected = config._replace(autorestart="unexpected",
                                     exitcodes=(0, 2))
        self.assertEqual(decide(unexpected, 2, False, 0), ("down", True))
        self.assertEqual(decide(unexpected, None, False, 0), ("restart", 0))
        never = config._replace(autorestart="false")
        self.assertEqual(decide(never, 1, False, 0), ("down", False))

    def test_split_lines(self):
        lines, rest = fcgiwatch.split_lines(b"", b"a\r\nb\n\nc", 10)
        self.assertEqual((lines, rest), ([b"a", b"b", b""], b"c"))

    def test_status_lines(self):
        fmt = fcgiwatch.format_status_line
        self.assertEqual(fmt({"name": "worker", "state": "backoff",
                              "pid": None, "why": "exited 1", "since": 97.0,
                              "retry_at": 103.5, "restarts": 7,
                              "want": "up"}, 100.0),
                         "worker: backoff (exited 1) 3 seconds, retry in 4 "
                         "seconds, restarts 7")
        self.assertEqual(fmt({"name": "cron", "state": "down", "pid": None,
                              "why": "stopped", "since": 0.0, "restarts": 0,
                              "want": "down"}, 120.0),
                         "cron: down (stopped) 120 seconds")
        self.assertEqual(fmt({"name": "x", "state": "fatal", "pid": None,
                              "why": "exec failed", "since": 0.0,
                              "want": "up", "restarts": 3,
                              "message": "gave up: exec failed"}, 1.0),
                         "x: fatal (exec failed) 1 seconds, wanted up, "
                         "restarts 3, gave up: exec failed")
        self.assertEqual(fcgiwatch.status_exit_code(
            [{"want": "up", "state": "up"}, {"want": "down",
                                             "state": "down"}]), 0)
        self.assertEqual(fcgiwatch.status_exit_code(
            [{"want": "up", "state": "backoff"}]), 3)

    def test_parse_args(self):
        parse_args = fcgiwatch.parse_args
        options = parse_args(["--signal", "HUP", "a", "b", "-c", "f"])
        self.assertEqual((options.action, options.signal, options.names,
                          options.config), ("signal", "HUP", ["a", "b"], "f"))
        self.assertEqual(parse_args(["--status", "--json"]).json, True)
        for bad in (["--stop"], ["--start", "--stop", "x"], ["--bogus"],
                    ["--json"], ["--signal", "NOPE", "x"], ["--reload", "x"],
                    ["-c"], ["--start", "all", "x"], ["--start", "a/b"],
                    ["name"]):
            self.assertRaises(fcgiwatch.UsageError, parse_args, bad)


def parse(text, filename="/etc/test.conf", euid=None):
    return fcgiwatch.parse_config(textwrap.dedent(text), filename, euid)


class ParseConfigTests(unittest.TestCase):
    def errors(self, text, euid=None):
        with self.assertRaises(fcgiwatch.ConfigErrors) as caught:
            parse(text, euid=euid)
        return [str(e) for e in caught.exception.errors]

    def test_minimal_and_defaults(self):
        config = parse("[program:web]\ncommand = sleep 5\n")
        (web,) = config.services
        self.assertEqual(web.name, "web")
        self.assertEqual(web.argv, ("sleep", "5"))
        self.assertEqual((web.startsecs, web.startretries, web.backoff_max,
                          web.stopsignal, web.stopwaitsecs, web.umask),
                         (1, None, 60, signal.SIGTERM, 10, 0o22))
        self.assertEqual(web.stdout_logfile, "syslog")
        self.assertEqual(web.stderr_logfile, "syslog")
        self.assertEqual(web.directory, "/etc")
        env = dict(web.env)
        self.assertEqual(env["PATH"], fcgiwatch.DEFAULT_PATH)
        self.assertEqual(set(env), {"PATH", "HOME", "USER", "LOGNAME",
                                    "SHELL"})
        self.assertEqual(config.globals.syslog_socket[2], "/dev/log")

    def test_percent_is_literal_and_priority_order(self):
        config = parse("""
            [b]
            command = date +%s
            priority = 5
            [a]
            command = true
            """)
        self.assertEqual([s.name for s in config.services], ["b", "a"])
        self.assertEqual(config.services[0].argv, ("date", "+%s"))

    def test_each_error_names_file_section_key(self):
        cases = [
            ("[a]\nuser = x\n", "[a] command: missing"),
            ("[a]\ncommand =   \n", "[a] command: empty"),
            ("[a]\ncommand = x\nbogus = 1\n", "[a] bogus: unknown key"),
            ("[a b]\ncommand = x\n", "[a b]: 'a b' is not a service name"),
            ("[a]\ncommand = x\nstartsecs = -1\n", "[a] startsecs: '-1' is "
             "negative"),
            ("[a]\ncommand = x\nstartretries = lots\n",
             "[a] startretries: 'lots' is not a whole number"),
            ("[a]\ncommand = x\nautostart = perhaps\n",
             "[a] autostart: 'perhaps' is not a boolean"),
            ("[a]\ncommand = x\numask = 999\n", "[a] umask: '999' is not an "
             "octal"),
            ("[a]\ncommand = x\nstopsignal = FOO\n", "[a] stopsignal: 'FOO' "
             "is not a signal"),
            ("[a]\ncommand = x\n[program:a]\ncommand = y\n",
             "[program:a]: service 'a' is already defined in [a]"),
            ("[a]\ncommand = x\nuser = no-such-user-here\n",
             "[a] user: no such user 'no-such-user-here'"),
            ("[a]\ncommand = x\ngroup = no-such-group-here\n",
             "[a] group: no such group"),
            ("[a]\ncommand = 'unbalanced\n", "[a] command: cannot split"),
            ("[a]\ncommand = x\ndirectory = /no/such/dir\n",
             "[a] directory: /no/such/dir does not exist"),
            ("[a]\ncommand = x\nstdout_logfile = /no/such/dir/log\n",
             "[a] stdout_logfile: directory /no/such/dir does not exist"),
            ("[a]\ncommand = x\nhealthcheck = gopher://x:1\n",
             "[a] healthcheck:"),
            ("[fcgiwatch]\nsyslogg = yes\n[a]\ncommand = x\n",
             "[fcgiwatch] syslogg: unknown key"),
            ("[fcgiwatch]\nsyslog_facility = nope\n[a]\ncommand = x\n",
             "[fcgiwatch] syslog_facility: 'nope' is not a syslog facility"),
            ("[a]\ncommand = x\ncommand = y\n", "[a] command: line 3: the "
             "key appears twice"),
            ("command = x\n", "line 1: text before the first [section]"),
            ("[a]\ncommand = x\njunk line\n", "line 3: not a key = value"),
            ("", "the file is empty"),
            ("[fcgiwatch]\nsyslog = no\n", "no services defined"),
        ]
        for text, expected in cases:
            with self.subTest(text=text):
                errors = self.errors(text)
                self.assertTrue(any(expected in e for e in errors),
                                "%r not in %r" % (expected, errors))
                for line in errors:
                    self.assertTrue(line.startswith("/etc/test.conf"), line)
                    self.assertNotIn("\n", line)

    def test_all_errors_reported_at_once(self):
        errors = self.errors("""
            [a]
            command = x
            startsecs = soon
            [b]
            stopsignal = NOPE
            """)
        self.assertEqual(len(errors), 3, errors)

    def test_non_root_cannot_name_another_user(self):
        if not IS_ROOT:
            self.skipTest("needs root to know a second user exists")
        errors = self.errors("[a]\ncommand = x\nuser = root\n",
                             euid=NOBODY.pw_uid)
        self.assertIn("only a root supervisor", errors[0])

    @unittest.skipUnless(IS_ROOT, "tests run as root")
    def test_user_resolved_in_parent(self):
        (service,) = parse("[a]\ncommand = id\nuser = nobody\n").services
        self.assertEqual((service.uid, service.gid),
                         (NOBODY.pw_uid, NOBODY.pw_gid))
        self.assertIn(NOBODY.pw_gid, service.groups)
        env = dict(service.env)
        self.assertEqual((env["USER"], env["LOGNAME"], env["HOME"]),
                         ("nobody", "nobody", NOBODY.pw_dir))

    def test_supervisord_section_mostly_works(self):
        (service,) = parse("""
            [program:cat]
            command=/bin/cat
            autostart=true
            autorestart=unexpected
            exitcodes=0,2
            startsecs=10
            startretries=3
            stopsignal=QUIT
            stopwaitsecs=10
            stopasgroup=false
            killasgroup=false
            redirect_stderr=true
            stdout_logfile=NONE
            stdout_logfile_maxbytes=1MB
            stdout_logfile_backups=10
            environment=A="1",B="2"
            priority=999
            umask=022
            """).services
        self.assertEqual(service.stopsignal, signal.SIGQUIT)
        self.assertEqual(service.stdout_logfile, "null")

    def test_diff_configs(self):
        old = parse("""
            [keep]
            command = sleep 1
            [tune]
            command = sleep 1
            [change]
            command = sleep 1
            [drop]
            command = sleep 1
            """).services
        new = parse("""
            [keep]
            command = sleep 1
            [tune]
            command = sleep 1
            startsecs = 5
            priority = 3
            [change]
            command = sleep 2
            [fresh]
            command = sleep 1
            """).services
        self.assertEqual(fcgiwatch.diff_configs(old, new),
                         (["fresh"], ["drop"], ["change"], ["tune"],
                          ["keep"]))

    def test_insecure_config(self):
        tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, tmp)
        path = os.path.join(tmp, "x.conf")
        with open(path, "w") as handle:
            handle.write("[a]\ncommand=x\n")
        if IS_ROOT:
            self.assertIsNone(fcgiwatch.insecure_config_reason(path))
        os.chmod(path, 0o666)
        self.assertIn("writable by others",
                      fcgiwatch.insecure_config_reason(path))
        os.chmod(path, 0o644)
        os.chmod(tmp, 0o777)
        self.assertIn("writable by others",
                      fcgiwatch.insecure_config_reason(path))


# ---------------------------------------------------------------------------
# Real supervisors
# ---------------------------------------------------------------------------

class SupervisorCase(unittest.TestCase):
    """Starts fcgiwatch on a config in a temporary directory, and makes sure
    that nothing it started outlives the test."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="fwt")
        os.chmod(self.tmp, 0o755)
        self.state_dir = os.path.join(self.tmp, "state")
        self.conf = os.path.join(self.tmp, "fcgiwatch.conf")
        self.log_path = os.path.join(self.tmp, "supervisor.log")
        self.proc = None
        self.addCleanup(self.cleanup)

    def cleanup(self):
        self.stop_supervisor()
        # Anything the test started must be gone by now.
        left = processes_with(self.tmp)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        try:
            shutil.rmtree(self.tmp)
        except OSError:
            pass
        if left and not getattr(self, "_outcome_failed", False):
            self.fail("processes left behind: %r" % left)

    def write_config(self, services, settings=None, raw=""):
        """services: {name: {key: value}}, or raw INI appended as is."""
        lines = ["[fcgiwatch]", "state_dir = %s" % self.state_dir]
        merged = {"syslog": "no"}
        merged.update(settings or {})
        lines.extend("%s = %s" % item for item in merged.items())
        for name, keys in services.items():
            lines.append("")
            lines.append("[program:%s]" % name)
            keys = dict(keys)
            mark = "FWTEST_MARK=%s" % self.tmp
            keys["environment"] = (keys["environment"] + "," + mark
                                   if "environment" in keys else mark)
            keys.setdefault("stdout_logfile", "null")
            keys.setdefault("startsecs", "0.2")
            for key, value in keys.items():
                lines.append("%s = %s" % (key, value))
        with open(self.conf, "w") as handle:
            handle.write("\n".join(lines) + "\n" + raw)
        return self.conf

    def start(self, services=None, settings=None, wait_up=True, args=()):
        if services is not None:
            self.write_config(services, settings)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [PY, PROGRAM, "-c", self.conf] + list(args),
            stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        log.close()
        wait_for(lambda: self.proc.poll() is not None or (
            (self.doc() or {}).get("supervisor", {}).get("pid")
            == self.proc.pid), 10, "the supervisor's status file")
        if self.proc.poll() is not None:
            self.fail("supervisor exited %s: %s" % (self.proc.returncode,
                                                    self.log_text()))
        if wait_up and services:
            for name, keys in services.items():
                if keys.get("autostart", "true") == "true":
                    self.wait_state(name, "up")
        return self.proc

    def stop_supervisor(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def log_text(self):
        try:
            with open(self.log_path, "rb") as handle:
                return handle.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def doc(self):
        return fcgiwatch.read_status_file(self.state_dir)

    def entry(self, name):
        doc = self.doc() or {}
        for entry in doc.get("services", []):
            if entry["name"] == name:
                return entry
        return None

    def wait_state(self, name, state, timeout=5.0, pid_not=None):
        def check():
            entry = self.entry(name)
            if entry and entry["state"] == state and (
                    pid_not is None or entry["pid"] != pid_not):
                return entry
            return None
        try:
            return wait_for(check, timeout, "%s to be %s" % (name, state))
        except AssertionError as exc:
            raise AssertionError("%s; now %r; log:\n%s" % (
                exc, self.entry(name), self.log_text()[-3000:]))

    def cli(self, *args, **kwargs):
        """Run fcgiwatch.py with this config; returns (code, out, err)."""
        user = kwargs.pop("user", None)
        env = kwargs.pop("env", None)
        stdin = kwargs.pop("stdin", subprocess.DEVNULL)
        timeout = kwargs.pop("timeout", 60)
        interpreter, preexec = PY, None
        if user is not None:
            interpreter = interpreter_for(user) if user is not NOBODY \
                else NOBODY_PY
            if interpreter is None:
                self.skipTest("no Python that %s may run" % user.pw_name)
            preexec = as_user(user)
        command = [interpreter, PROGRAM, "-c", self.conf] + list(args)
        result = subprocess.run(command, stdin=stdin, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env,
                                preexec_fn=preexec, timeout=timeout,
                                universal_newlines=True)
        return result.returncode, result.stdout, result.stderr

    def kill_service(self, name, number=signal.SIGKILL):
        entry = self.entry(name)
        self.assertTrue(entry and entry["pid"], "%s has no pid: %r" % (
            name, entry))
        os.kill(entry["pid"], number)
        return entry["pid"]

    def zombies(self):
        return [pid for pid, state in children_of(self.proc.pid)
                if state == "Z"]


class CommandLineTests(SupervisorCase):
    """Bad input: one clear line, exit 2, nothing started."""

    def test_bad_configs_exit_2_and_start_nothing(self):
        cases = {
            "[a]\ncommand = \n": "[a] command: empty",
            "[a]\ncommand = sleep 9\nstartsecs = -3\n":
                "[a] startsecs: '-3' is negative",
            "not ini at all\n": "text before the first [section]",
            "": "the file is empty",
        }
        for text, expected in cases.items():
            with self.subTest(text=text):
                with open(self.conf, "w") as handle:
                    handle.write("[fcgiwatch]\nstate_dir = %s\n\n" %
                                 self.state_dir if text.startswith("[")
                                 else "")
                    handle.write(text)
                for args in ((), ("--check",), ("--daemon",)):
                    code, out, err = self.cli(*args, timeout=20)
                    self.assertEqual(code, 2, (args, out, err))
                    self.assertIn(expected, err)
                    self.assertIn(self.conf, err)
                    self.assertNotIn("Traceback", err)
                    self.assertEqual(len(err.strip().splitlines()), 1, err)
                    self.assertFalse(os.path.exists(self.state_dir))

    def test_missing_and_unreadable_file(self):
        code, out, err = self.cli("--check")
        self.assertEqual(code, 2)
        self.assertIn("cannot read: No such file or directory", err)
        if IS_ROOT:
            self.write_config({"a": {"command": "true"}})
            os.chmod(self.conf, 0o600)
            code, out, err = self.cli("--check", user=NOBODY)
            self.assertEqual(code, 2)
            self.assertIn("Permission denied", err)

    def test_no_config_lists_paths_tried(self):
        env = dict(os.environ, FCGIWATCH_CONFIG=os.path.join(
            self.tmp, "nowhere.conf"))
        result = subprocess.run([PY, PROGRAM, "--status"], env=env,
                                stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE,
                                universal_newlines=True)
        if os.path.exists("/etc/fcgiwatch.conf") or os.path.exists(
                os.path.join(HERE, "fcgiwatch.conf")):
            self.skipTest("a real config exists on this machine")
        self.assertEqual(result.returncode, 2)
        self.assertIn("nowhere.conf", result.stderr)
        self.assertIn("/etc/fcgiwatch.conf", result.stderr)

    def test_usage_errors(self):
        self.write_config({"a": {"command": "true"}})
        for args in (["--bogus"], ["--stop"], ["--start", "--stop", "a"]):
            code, out, err = self.cli(*args)
            self.assertEqual(code, 2, err)
            self.assertTrue(err.startswith("fcgiwatch: "), err)
            self.assertEqual(len(err.splitlines()), 1)

    def test_check_prints_what_would_run(self):
        services = {"web": {"command": "sleep 100", "directory": self.tmp}}
        if IS_ROOT:
            services["web"]["user"] = "nobody"
        self.write_config(services)
        code, out, err = self.cli("--check")
        self.assertEqual(code, 0, err)
        self.assertIn("web: sleep 100", out)
        self.assertIn("['sleep', '100']", out)
        self.assertIn("directory %s" % self.tmp, out)
        if IS_ROOT:
            self.assertIn("nobody (uid %d, gid %d" % (NOBODY.pw_uid,
                                                      NOBODY.pw_gid), out)
        self.assertFalse(os.path.exists(self.state_dir))

    def test_version_and_help(self):
        code, out, err = self.cli("--version")
        self.assertEqual((code, out.strip()), (0, "fcgiwatch "
                                               + fcgiwatch.VERSION))
        code, out, err = self.cli("--help")
        self.assertEqual(code, 0)
        self.assertIn("--status", out)

    @unittest.skipUnless(IS_ROOT, "the check applies to root")
    def test_root_refuses_config_others_can_write(self):
        self.write_config({"a": {"command": "true"}})
        os.chmod(self.conf, 0o666)
        code, out, err = self.cli()
        self.assertEqual(code, 2)
        self.assertIn("writable by others", err)
        self.assertFalse(os.path.exists(self.state_dir))


if __name__ == "__main__":
    program = unittest.main(exit=False, verbosity=int(os.environ.get(
        "FWTEST_VERBOSE", "1")))
    result = program.result
    failed = len(result.failures) + len(result.errors) + len(
        getattr(result, "unexpectedSuccesses", []))
    passed = result.testsRun - failed - len(result.skipped)
    if result.skipped:
        print("%d skipped" % len(result.skipped))
    print("%d passed, %d failed" % (passed, failed))
    sys.exit(1 if failed else 0)
