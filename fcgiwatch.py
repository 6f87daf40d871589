#!/usr/bin/env python3
"""fcgiwatch: keep long-running programs alive.  One file, standard library only.

Point it at an INI file and every program in it runs, as the user it should
run as, and comes back within milliseconds when it dies.  Start it from a
``@reboot`` crontab line; ask ``--status`` how each program is doing.  The
command line is USAGE, below (what --help prints).

Map of this file, top to bottom; each section opens with a banner and a
paragraph on what lives there and why:

  imports, constants, USAGE
  Errors                     exceptions that carry file, section, key
  Words                      durations, sizes, a service's text made safe
  Config                     converters, parse_config, diff_configs
  Child process              spawn_child, the child side, launch_run
  Safe paths                 how a root supervisor writes files others reach
  Output: log files and syslog
  Output routing             a service's pipes and where they go
  Held listening sockets     socket = : bound once, kept across restarts
  Supervision state machine  Run, Overlap, Service; TRANSITIONS, OVERLAP
  Process trees              orphans, adopted daemons (Tree)
  Readiness from the program sd_notify's READY=1 (NotifySocket)
  Alerts                     alert_command
  Health probes              tcp, FastCGI and HTTP probes (Probe)
  Pools: rolling restarts    Roll, Rolls
  Dependencies               depends_on: waits, stops in waves
  What the supervisor owns on disk   the lock, status file, pidfile,
                             standing orders (Orders)
  Event loop                 Supervisor: start-up, the loop, reload
  Leftovers of a supervisor that died
  Upgrade in place (--reexec)        Handover
  Status                     --status, the status file, metrics
  Control protocol           the server, then the client
  supervisord's XML-RPC interface    supervisorctl's socket (RpcServer),
                             the methods served (RpcApi, RPC_METHODS)
  Command line               parse_args, main
"""

import errno
import fcntl
import heapq
import math
import os
import re
import signal
import socket
import stat
import struct
import sys
import time
from collections import deque, namedtuple
from itertools import chain
from selectors import EVENT_READ, EVENT_WRITE, DefaultSelector

USAGE = """\
Usage:
  fcgiwatch.py [-c FILE]                  run the supervisor in the foreground
  fcgiwatch.py [-c FILE] --daemon         detach and run in the background (for cron)
  fcgiwatch.py [-c FILE] --check          validate the config, print what would run
  fcgiwatch.py [-c FILE] --status [--json | --prometheus] [NAME ...]
  fcgiwatch.py [-c FILE] --start NAME ... | all
  fcgiwatch.py [-c FILE] --stop NAME ... | all
  fcgiwatch.py [-c FILE] --restart NAME ... | all
  fcgiwatch.py [-c FILE] --signal SIG NAME ... | all
  fcgiwatch.py [-c FILE] --tail [-f] [-n N] NAME   the last N lines (default 10) NAME wrote; -f follows
  fcgiwatch.py [-c FILE] --reload         re-read the config (same as SIGHUP)
  fcgiwatch.py [-c FILE] --shutdown       stop every service, then the supervisor
  fcgiwatch.py [-c FILE] --reexec         re-execute this file (upgrade); services keep running
  fcgiwatch.py --version | --help

NAME is a service, a pool's program (all its instances), a group, or
GROUP:NAME and GROUP:* as supervisorctl writes them.  Without -c the config
is $FCGIWATCH_CONFIG, else fcgiwatch.conf beside this file, else
/etc/fcgiwatch.conf.

Exit codes: 0 success; 1 the operation failed (supervisor not running,
permission denied, a service did not come up); 2 usage or config error;
3 (--status only) the supervisor runs but a service that should be up is not.

Signals to the supervisor: TERM or INT stop every service and exit; HUP
reloads the config; USR1 reopens log files; USR2 re-executes the supervisor.
"""

VERSION = "1.0.0"

# Exit codes (see the module docstring).
EXIT_OK = 0
EXIT_FAIL = 1
EXIT_USAGE = 2
EXIT_NOT_UP = 3


#: The service states of the contract: plain strings, exactly what the
#: status file and --status --json carry.
STARTING, UP, STOPPING, BACKOFF, DOWN, FATAL = (
    "starting", "up", "stopping", "backoff", "down", "fatal")

STATES = (STARTING, UP, STOPPING, BACKOFF, DOWN, FATAL)

#: The why of a service that waits for its dependencies (depends_on).
WAITING = "waiting"

#: Where a service's processes may exist: the states with a pid or a group.
RUNNING_STATES = (STARTING, UP, STOPPING)

#: Default PATH given to services (and used to find their programs).
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

#: Files inside state_dir.
LOCK_FILE = "pid"
STATUS_FILE = "status.json"
CONTROL_SOCKET = "control.sock"
REEXEC_FILE = "reexec.json"
REEXEC_CHECK_FILE = "reexec-check.out"
AUTO_LOG_DIR = "logs"     # supervisord's AUTO log files, without childlogdir

#: This file, for --reexec: the daemon's cwd is /, so resolve it now.
PROGRAM_PATH = os.path.abspath(__file__)

#: The long-running supervisor runs this file as a module, never as a
#: script: CPython compiles a script on every run and keeps its whole
#: syntax tree (about 10 MB for this file) alive until the script's top
#: level returns, which for a supervisor is never, and every fork would
#: copy page tables for it.  As a module it loads its cached bytecode.
#: This is how, when the file's name is not a module name (a copy named
#: "fcgiwatch" with no .py): loaded by hand, compiled every time.
BOOT = ("import sys; sys.dont_write_bytecode = True; "
        "from importlib.machinery import SourceFileLoader; "
        "from importlib.util import module_from_spec, spec_from_loader; "
        "loader = SourceFileLoader('fcgiwatch', sys.argv[1]); "
        "module = module_from_spec(spec_from_loader('fcgiwatch', loader)); "
        "sys.modules['fcgiwatch'] = module; loader.exec_module(module); "
        "sys.exit(module.main(sys.argv[2:]))")

#: Carries the caller's working directory across the boot exec, which
#: starts the module in its own directory (where python3 -m finds it).
BOOT_CWD = "FCGIWATCH_BOOT_CWD"

#: A run shorter than this is a quick failure even with startsecs = 0, so
#: that a program that exits at once can never make us restart it in a loop.
MIN_GOOD_RUN = 0.1

#: prctl(2) option: orphaned descendants are reparented to us, not PID 1.
PR_SET_CHILD_SUBREAPER = 36

#: Set in every service's environment to the service's name: an orphan
#: that left its service's session is traced back by it.
SERVICE_VARIABLE = b"FCGIWATCH_SERVICE"

#: And to the supervisor's state_dir: whose service it is.
STATE_DIR_VARIABLE = b"FCGIWATCH_STATE_DIR"

#: Orphans of one run logged by pid; past that, one line says so.
ORPHANS_LOGGED = 10
#: The longest adoption waits for a double fork's middle process, already
#: exiting, to hand the daemon on (Tree.wait_exiting).
EXIT_SETTLE = 0.5

#: How long a group may linger after SIGKILL before we stop waiting for it.
GROUP_KILL_GRACE = 5.0

#: Poll period while waiting for the rest of a process group to leave
#: (grandchildren do not send us SIGCHLD); only while something is stopping.
GROUP_POLL = 0.02

#: Bytes read from a child's output pipe per wake-up; a pipe is made this
#: large where the kernel allows, so a fast writer needs few wake-ups.
PIPE_CHUNK = 1 << 18

#: fcntl's F_SETPIPE_SZ and F_GETPIPE_SZ, which the module names only
#: from Python 3.10 on.
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)

#: The kernel's budget of pipe pages per user who is not root: past it,
#: new pipes get a page or two.
PIPE_PAGES_SOFT = "/proc/sys/fs/pipe-user-pages-soft"

#: Least time between two writes of the status file: a burst of exits
#: (200 children killed at once) costs a few writes, not one per loop turn.
STATUS_INTERVAL = 0.05

#: And at least this many times what the last write took (see
#: StateDir.next_write).
STATUS_SHARE = 20

#: Starts made in one turn of the loop; a burst's others wait for the next
#: turns, so that reaping, control requests and probes go on meanwhile.
SPAWN_SLICE = 50

#: Seconds between exits and the look for the orphans they left (see
#: Supervisor.reap): the new runs start first.
SCAN_DELAY = 0.02

#: Bytes read from a pipe bound for syslog per wake-up: each line is a
#: datagram anyway, and when the socket fills, what was read waits in
#: memory; small reads keep that small and leave the rest in the pipe.
SYSLOG_CHUNK = 1 << 14

#: Recent output kept per service for --tail, whatever its destination.
RECENT_BYTES = 1 << 16

#: Bytes a --tail -f reader may fall behind before lines are dropped for
#: it (and it is told how many).
FOLLOW_AHEAD = 1 << 18

#: Syslog message body limit: longer lines are split, never dropped.
SYSLOG_LINE_MAX = 1024

#: Messages kept while the syslog socket is full (then the oldest go).
SYSLOG_BACKLOG_MAX = 10000

#: Largest control request accepted, in bytes.
CONTROL_REQUEST_MAX = 65536

#: Seconds the control sockets are left alone when no file descriptor is
#: left to accept a connection with.
ACCEPT_PAUSE = 1

#: Bytes of a streamed answer (the status) kept ready ahead of the client.
STREAM_AHEAD = 1 << 16

#: Seconds a control client waits for the supervisor's first answer.
CONTROL_ANSWER_TIMEOUT = 10.0

SYSLOG_FACILITIES = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5,
    "lpr": 6, "news": 7, "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11,
    "local0": 16, "local1": 17, "local2": 18, "local3": 19,
    "local4": 20, "local5": 21, "local6": 22, "local7": 23,
}
LOG_ERR, LOG_WARNING, LOG_INFO = 3, 4, 6


# ===========================================================================
# Errors
#
# Every error a user can cause carries enough context to say where it is and
# what to do.  Config errors are collected, not raised one by one, so that a
# file with three mistakes is fixed in one round.
# ===========================================================================

class ConfigError(Exception):
    """One problem in one config file, at one section and key."""

    #: A message longer than this is cut: a 5,000-character value helps
    #: nobody on a terminal or in a cron mail.
    MAX = 300

    def __init__(self, filename, section, key, message):
        # One line, whatever the value held (a line feed, a control byte).
        message = "".join(c if c >= " " or c == "\t" else repr(c)[1:-1]
                          for c in message)
        if len(message) > self.MAX:
            message = message[:self.MAX - 5] + " ..."
        Exception.__init__(self, message)
        self.filename, self.section, self.key = filename, section, key
        self.message = message

    def __str__(self):
        where = [self.filename]
        if self.section:
            where.append("[%s]" % self.section)
        if self.key:
            where.append(self.key)
        return "%s: %s" % (" ".join(where), self.message)


class ConfigErrors(Exception):
    """All the problems found in one config file."""

    def __init__(self, errors):
        Exception.__init__(self, "\n".join(str(e) for e in errors))
        self.errors = list(errors)

    def lines(self):
        return ["fcgiwatch: %s" % e for e in self.errors]


class SpawnError(Exception):
    """A step of starting a program failed: which step, errno, what path."""

    def __init__(self, step, number, path=""):
        Exception.__init__(self, step, number, path)
        self.step, self.errno, self.path = step, number, path

    def __str__(self):
        reason = os.strerror(self.errno) if self.errno else "unknown error"
        return "%s failed: %s%s" % (self.step, reason,
                                    " (%s)" % self.path if self.path else "")


class UsageError(Exception):
    """A bad command line or control request (exit 2)."""


class Failure(Exception):
    """An operation failed for a reason outside the user's input (exit 1)."""


class AlreadyRunning(Failure):
    def __init__(self, pid):
        Failure.__init__(self, "already running (pid %s)" % (pid or "?"))
        self.pid = pid


# ===========================================================================
# Words
#
# How durations, sizes and a service's own text read in log lines and in
# --status: short, and never with a control character a service chose.
# ===========================================================================

#: Control characters (C0, DEL, C1): what a service's text must not carry
#: to a terminal or a log line (escape sequences, a fake line).
CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f]")


#: What --tail keeps of a service's lines: tabs, not escape sequences.
OUTPUT_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def output_text(lines, prefix=""):
    r"""Lines a service wrote as text for root's terminal: each with
    prefix, undecodable bytes and control characters but tabs shown as
    '?' (a service must not drive the terminal of whoever reads its
    output).

    >>> output_text([b"ok\tgo", b"\x1b[2Jbad \xff"], "web: ").splitlines()
    ['web: ok\tgo', 'web: ?[2Jbad ?']
    """
    return "".join(prefix + OUTPUT_CONTROL.sub("?", line.decode(
        "utf-8", "replace").replace("\ufffd", "?")) + "\n" for line in lines)


def printable(text):
    """text with each control character shown as '?'.

    >>> printable("ok\\x1b]0;owned\\x07 \\x9b2J")
    'ok?]0;owned? ?2J'
    """
    return CONTROL_CHARACTERS.sub("?", text)


def os_error_words(exc):
    """An OSError in words; running out of file descriptors says which
    limit, and what to do.

    >>> os_error_words(OSError(errno.ENOENT, "No such file or directory"))
    'No such file or directory'
    """
    if exc.errno in (errno.EMFILE, errno.ENFILE):
        import resource
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        which = "the system's" if exc.errno == errno.ENFILE else \
            "the supervisor's limit of %d" % soft
        return ("%s: out of file descriptors (%s); raise minfds in "
                "[fcgiwatch], or the hard limit (ulimit -Hn) it is capped at"
                % (exc.strerror, which))
    return exc.strerror or str(exc)


def format_bytes(size):
    """12.3 MB, 512 KB: sizes for log lines.

    >>> format_bytes(300 * 1024 * 1024)
    '300.0 MB'
    """
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if size >= scale:
            return "%.1f %s" % (size / float(scale), unit)
    return "%d bytes" % size


def format_seconds(seconds):
    """Short human durations for log lines: 0.2 s, 12 s, 3 min 4 s."""
    if seconds < 10:
        return "%.1f s" % seconds
    if seconds < 120:
        return "%d s" % seconds
    if seconds < 7200:
        return "%d min %d s" % (seconds // 60, seconds % 60)
    return "%d h %d min" % (seconds // 3600, seconds % 3600 // 60)


# ===========================================================================
# Config
#
# Small converters that turn one string into one value or raise ValueError
# naming the value; parse_config() runs them over every key and adds file,
# section and key to each message.  ServiceConfig is an immutable namedtuple
# so that reload can compare old and new with ==.
# ===========================================================================

GlobalConfig = namedtuple("GlobalConfig", [
    "filename", "state_dir", "syslog", "syslog_facility", "syslog_socket",
    "log_file", "path", "pidfile", "minfds", "minprocs", "metrics_file",
    "alert_command", "alert_interval", "data_dir", "rpc"])

#: Where supervisord's clients reach us ([unix_http_server] and
#: [inet_http_server]; None where not served): unix (path, mode, uid, gid),
#: inet (host, port), each's auth (username, password) or None, and
#: [supervisord] identifier.
RpcConfig = namedtuple("RpcConfig", ["unix", "unix_auth", "inet",
                                     "inet_auth", "identifier"])

ServiceConfig = namedtuple("ServiceConfig", [
    "name", "section", "command", "argv", "user", "uid", "gid", "groups",
    "home", "shell", "directory", "environment", "env", "umask",
    "autostart", "autorestart", "exitcodes", "startsecs", "startretries",
    "backoff_max", "stopsignal", "stopwaitsecs", "stopasgroup", "killasgroup",
    "stdout_logfile", "stderr_logfile", "stdout_logfile_maxbytes",
    "stdout_logfile_backups", "stderr_logfile_maxbytes",
    "stderr_logfile_backups", "redirect_stderr", "healthcheck",
    "healthcheck_interval", "healthcheck_timeout", "healthcheck_retries",
    "priority", "socket", "socket_owner", "socket_mode", "ready",
    "watchdog_secs", "program", "process_num", "numprocs",
    "environment_file", "limits", "stdout_logfile_timestamps",
    "stderr_logfile_timestamps", "max_memory", "socket_pass", "depends_on",
    "dependency_restart", "stdout_logfile_maxage", "stderr_logfile_maxage",
    "stdout_logfile_compress", "stderr_logfile_compress"])

#: Values for the ServiceConfig fields that a --reexec hand-over from an
#: older version does not carry (fields are only ever added at the end;
#: program None: the service's own name).
LATER_FIELDS = {"ready": "startsecs", "watchdog_secs": 0, "program": None,
                "process_num": 0, "numprocs": 1, "environment_file": None,
                "limits": (), "stdout_logfile_timestamps": False,
                "stderr_logfile_timestamps": False, "max_memory": None,
                "socket_pass": "stdin", "depends_on": (),
                "dependency_restart": False, "stdout_logfile_maxage": None,
                "stderr_logfile_maxage": None,
                "stdout_logfile_compress": False,
                "stderr_logfile_compress": False}

#: A whole config: globals, services (instances, in priority order), the
#: warnings that reading it gave (ConfigError each), the groups as
#: ((name, (program, ...)), ...), and the file of each section as
#: ((section, file), ...).
Config = namedtuple("Config", ["globals", "services", "warnings", "groups",
                               "files"])

#: Keys that shape the process itself: a change restarts the service on
#: reload.  Every other key only changes how it is supervised.
PROCESS_KEYS = (
    "command", "argv", "user", "uid", "gid", "groups", "home", "shell",
    "directory", "environment", "env", "umask", "stdout_logfile",
    "stderr_logfile", "stdout_logfile_maxbytes", "stdout_logfile_backups",
    "stderr_logfile_maxbytes", "stderr_logfile_backups", "redirect_stderr",
    "socket", "socket_owner", "socket_mode", "ready", "watchdog_secs",
    "environment_file", "limits", "socket_pass", "stdout_logfile_maxage",
    "stderr_logfile_maxage", "stdout_logfile_compress",
    "stderr_logfile_compress")

#: The process keys that shape a service's output pipes: a run keeps its
#: pipes across a change of any other (an overlapping restart's old run
#: writes on while the new one starts).
OUTPUT_KEYS = (
    "stdout_logfile", "stderr_logfile", "stdout_logfile_maxbytes",
    "stdout_logfile_backups", "stderr_logfile_maxbytes",
    "stderr_logfile_backups", "redirect_stderr", "stdout_logfile_maxage",
    "stderr_logfile_maxage", "stdout_logfile_compress",
    "stderr_logfile_compress")

#: Service keys and their defaults (None: required; "": derived later).
SERVICE_DEFAULTS = {
    "command": None, "user": "", "group": "", "directory": "",
    "environment": "", "umask": "022", "autostart": "true",
    "autorestart": "true", "exitcodes": "0", "startsecs": "1",
    "startretries": "forever", "backoff_max": "60", "stopsignal": "TERM",
    "stopwaitsecs": "10", "stopasgroup": "true", "killasgroup": "true",
    "stdout_logfile": "syslog", "stderr_logfile": "",
    "stdout_logfile_maxbytes": "10MB", "stdout_logfile_backups": "5",
    "stderr_logfile_maxbytes": "", "stderr_logfile_backups": "",
    "redirect_stderr": "false", "healthcheck": "",
    "healthcheck_interval": "10", "healthcheck_timeout": "3",
    "healthcheck_retries": "3", "priority": "999", "socket": "",
    "socket_owner": "", "socket_mode": "0700", "ready": "startsecs",
    "watchdog_secs": "0", "numprocs": "1", "numprocs_start": "0",
    "process_name": "%(program_name)s", "environment_file": "",
    "limits": "", "stdout_logfile_timestamps": "false",
    "stderr_logfile_timestamps": "", "max_memory": "",
    "socket_pass": "stdin", "depends_on": "", "dependency_restart": "false",
    "stdout_logfile_maxage": "", "stderr_logfile_maxage": "",
    "stdout_logfile_compress": "false", "stderr_logfile_compress": "",
}

#: Keys that shape the instances of a program, read before its sections'
#: other keys are expanded for each instance.
POOL_KEYS = ("numprocs", "numprocs_start", "process_name")

#: supervisord's expansions: %(NAME)s with Python's width and type, %% for
#: a %.  Any other % is left as it is (date +%s stays date +%s).
EXPANSION_RE = re.compile(
    r"%%|%\(([^)]*)\)([#0 +-]*[0-9]*(?:\.[0-9]+)?[diouxXeEfFgGcrs])")

GLOBAL_KEYS = ("state_dir", "syslog", "syslog_facility", "syslog_socket",
               "log_file", "path", "metrics_file", "alert_command",
               "alert_interval", "minfds", "data_dir")

#: The keys whose value may continue on indented lines below.
MULTILINE_KEYS = ("command", "environment")

SERVICE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

#: Where fcgiwatch's own section lives; every other section is a service.
OWN_SECTION = "fcgiwatch"

TRUE_WORDS = ("true", "yes", "on", "1")
FALSE_WORDS = ("false", "no", "off", "0")


def to_bool(value):
    """Parse a boolean the way supervisord does.

    >>> to_bool("Yes"), to_bool("off")
    (True, False)
    """
    word = value.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError("%r is not a boolean; use true or false" % value)


def to_int(value, minimum=0):
    """A whole number no smaller than minimum."""
    try:
        number = int(value.strip(), 10)
    except ValueError:
        raise ValueError("%r is not a whole number" % value)
    if minimum is not None and number < minimum:
        raise ValueError("%r is below %d" % (value, minimum))
    return number


#: Longest duration a key takes: a year is more than any wait a service
#: needs, and far from where a timeout overflows select().
MAX_SECONDS = 365 * 86400

#: Shortest period of what repeats (a health check, a back-off): below it
#: a typo such as 1e-3 for 1e3 would keep a core busy.
MIN_INTERVAL = 0.05


def to_age(value):
    """A log file's age limit: 1d, 12h, 30m, or seconds (1 at least).

    >>> to_age("1d"), to_age("90")
    (86400.0, 90.0)
    """
    text = value.strip().lower()
    scale = {"d": 86400, "h": 3600, "m": 60}.get(text[-1:], 1)
    try:
        seconds = to_seconds(text[:-1] if scale != 1 else text) * scale
    except ValueError:
        raise ValueError("%r is not an age; write 1d, 12h, 30m or seconds"
                         % value)
    if not 1 <= seconds <= MAX_SECONDS:
        raise ValueError("%r: give from 1 second to a year" % value)
    return seconds


def to_seconds(value, minimum=0.0):
    """A duration in seconds, fractions allowed, from minimum to a year.

    >>> to_seconds("1.5")
    1.5
    """
    text = value.strip()
    if text.endswith("s") and not text.endswith("ss"):
        text = text[:-1].strip()
    try:
        number = float(text)
    except ValueError:
        raise ValueError("%r is not a number of seconds" % value)
    if number != number or number in (float("inf"), float("-inf")):
        raise ValueError("%r is not a number of seconds" % value)
    if number < 0:
        raise ValueError("%r is negative; durations are 0 or more seconds"
                         % value)
    if number < minimum:
        raise ValueError("%r is less than %s seconds, which would keep a "
                         "core busy" % (value, minimum))
    if number > MAX_SECONDS:
        raise ValueError("%r is more than a year (%d seconds); give a "
                         "shorter time" % (value, MAX_SECONDS))
    return number


def to_interval(value):
    """A period of something that repeats: at least MIN_INTERVAL."""
    return to_seconds(value, MIN_INTERVAL)


def to_watchdog(value):
    """0 (off), or a period as to_interval."""
    number = to_seconds(value)
    return number and to_interval(value)


#: Most rotated files kept, and most instances of one program: beyond
#: these a typo costs minutes of renames or of reading the config.
MAX_BACKUPS = 1000
MAX_NUMPROCS = 10000


def to_count(value, most):
    """A whole number from 0 to most."""
    number = to_int(value)
    if number > most:
        raise ValueError("%r is more than %d" % (value, most))
    return number


def to_octal(value):
    """An octal mode such as 022 or 0o750."""
    text = value.strip().lower()
    if text.startswith("0o"):
        text = text[2:]
    try:
        number = int(text, 8)
    except ValueError:
        raise ValueError("%r is not an octal number such as 022" % value)
    if not 0 <= number <= 0o7777:
        raise ValueError("%r is out of range for a mode" % value)
    return number


def to_signal(value):
    """A signal by name (TERM, SIGTERM, term) or number; returns its number.

    >>> to_signal("hup") == to_signal("SIGHUP") == to_signal("1")
    True
    """
    text = value.strip()
    if text.isdigit():
        number = int(text)
        if 0 < number < signal.NSIG:
            return number
        raise ValueError("%r is not a signal number" % value)
    name = text.upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    number = getattr(signal, name, None)
    if (isinstance(number, int) and not name.startswith("SIG_")
            and 0 < int(number) < signal.NSIG):
        return int(number)
    raise ValueError("%r is not a signal name; use e.g. TERM, HUP, INT"
                     % value)


def signal_name(number):
    """KILL for 9, and the number as text for a signal with no name."""
    try:
        return signal.Signals(number).name[3:]
    except ValueError:
        return str(number)


def to_exitcodes(value):
    """Comma-separated exit codes, each 0 to 255."""
    codes = []
    for part in value.split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit() or int(part) > 255:
            raise ValueError("%r is not an exit code (0 to 255)" % part)
        codes.append(int(part))
    if not codes:
        raise ValueError("no exit codes given; use e.g. 0 or 0,2")
    return tuple(sorted(set(codes)))


def to_byte_size(value):
    """A size in bytes, with an optional KB, MB or GB (powers of 1024).

    >>> to_byte_size("10MB"), to_byte_size("0"), to_byte_size("1 kb")
    (10485760, 0, 1024)
    """
    text = value.strip().upper().replace(" ", "")
    factor = 1
    for suffix, size in (("KB", 1 << 10), ("MB", 1 << 20), ("GB", 1 << 30),
                         ("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30),
                         ("B", 1)):
        if text.endswith(suffix):
            text, factor = text[:-len(suffix)], size
            break
    if not text.isdigit():
        raise ValueError("%r is not a size; use e.g. 10MB, 500KB or 0"
                         % value)
    return int(text) * factor


def to_retries(value):
    """A number of retries, or forever (None)."""
    if value.strip().lower() in ("forever", "infinite", "unlimited"):
        return None
    return to_int(value)


def to_ready(value):
    """startsecs or notify."""
    word = value.strip().lower()
    if word not in ("startsecs", "notify"):
        raise ValueError("%r is not one of startsecs (ready once it ran "
                         "startsecs), notify (ready when it sends READY=1 "
                         "to $NOTIFY_SOCKET)" % value)
    return word


#: limits = NAME=VALUE, ...: the names (daemontools' softlimit's, by what
#: they limit) and whether the value is a size.
LIMIT_NAMES = {
    "nofile": ("RLIMIT_NOFILE", False), "nproc": ("RLIMIT_NPROC", False),
    "core": ("RLIMIT_CORE", True), "as": ("RLIMIT_AS", True),
    "data": ("RLIMIT_DATA", True), "stack": ("RLIMIT_STACK", True),
    "fsize": ("RLIMIT_FSIZE", True), "memlock": ("RLIMIT_MEMLOCK", True),
    "rss": ("RLIMIT_RSS", True), "cpu": ("RLIMIT_CPU", False)}


def to_limits(value):
    """limits as ((name, number or -1 for unlimited), ...), sorted.

    >>> to_limits("nofile=123, core=0, as=2GB, cpu=unlimited")
    (('as', 2147483648), ('core', 0), ('cpu', -1), ('nofile', 123))
    """
    found = {}
    for item in value.replace("\n", ",").split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, number = item.partition("=")
        name, number = name.strip().lower(), number.strip()
        if not sep or name not in LIMIT_NAMES:
            raise ValueError("%r is not NAME=VALUE with NAME one of %s" % (
                item, ", ".join(sorted(LIMIT_NAMES))))
        if number.lower() in ("unlimited", "infinity"):
            found[name] = -1
        elif LIMIT_NAMES[name][1]:
            found[name] = to_byte_size(number)
        else:
            found[name] = to_int(number)
    return tuple(sorted(found.items()))


def read_environment_file(path, identity, euid):
    """The (name, value) pairs of an environment_file, systemd's
    EnvironmentFile= form: KEY=VALUE lines, '#' or ';' comments, optional
    export, values in single or double quotes (backslash escapes in
    double ones).  Raises ValueError with the reason, for --status.

    As root it is opened as the run user (identity: uid, gid, groups, or
    None for the supervisor's own user): a user cannot read a
    file into a service's environment that the user could not read, nor
    plant a link to one, and a file that anyone but root and the run user
    may change is refused, as an unsafe config is."""
    import shlex
    uid = identity[0] if identity else None
    # O_NONBLOCK: a FIFO (or a device) put under the name must not hold
    # the one loop that keeps every service alive; it is refused below.
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        if euid == 0 and identity is not None:
            fd = with_identity(identity, os.open, path, flags)
        else:
            fd = os.open(path, flags)
    except OSError as exc:
        raise ValueError("environment_file %s: %s%s" % (
            path, exc.strerror, "; it is read as the run user %s, who must "
            "be able to read it" % user_label(uid) if exc.errno ==
            errno.EACCES and uid is not None else ""))
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("environment_file %s is not a regular file"
                             % path)
        if euid == 0 and (info.st_uid not in (0, uid if uid is not None
                                              else 0) or
                          info.st_mode & 0o022):
            raise ValueError("environment_file %s can be changed by someone "
                             "other than root and the run user (owner uid "
                             "%d, mode %o); chown and chmod go-w it" % (
                                 path, info.st_uid, info.st_mode & 0o7777))
        data = handle.read(1 << 20)
    pairs = []
    for number, line in enumerate(data.decode("utf-8", "replace")
                                  .splitlines(), 1):
        text = line.strip()
        if not text or text[0] in "#;":
            continue
        if text.startswith("export "):
            text = text[len("export "):].lstrip()
        name, sep, value = text.partition("=")
        name = name.strip()
        if not sep or not ENV_NAME_RE.match(name):
            raise ValueError("environment_file %s line %d: not KEY=value"
                             % (path, number))
        value = value.strip()
        if value[:1] in ("'", '"'):
            try:
                words = shlex.split(value)
            except ValueError:
                raise ValueError("environment_file %s line %d: an unclosed "
                                 "quote" % (path, number))
            value = words[0] if words else ""
        pairs.append((name, value))
    return tuple(pairs)


def to_autorestart(value):
    """true, false, or unexpected."""
    word = value.strip().lower()
    if word == "unexpected":
        return "unexpected"
    try:
        return "true" if to_bool(word) else "false"
    except ValueError:
        raise ValueError("%r is not one of true, false, unexpected" % value)


def to_environment(value):
    """KEY=value pairs, comma- or newline-separated; values may be quoted.

    Returns a tuple of (key, value) pairs in the order given.

    >>> to_environment('A=1, B="x, y"\\nC=')
    (('A', '1'), ('B', 'x, y'), ('C', ''))
    """
    pairs, items, current, quote, quoted = [], [], [], None, False
    for char in value + ",":
        if quote:
            if char == quote:
                quote = None
            else:
                current.append(char)
        elif char in "\"'":
            quote, quoted = char, True
        elif char in ",\n":
            item = "".join(current).strip()
            if item or quoted:
                items.append(item)
            current, quoted = [], False
        else:
            current.append(char)
    if quote:
        raise ValueError("unbalanced %s quote in %r" % (quote, value))
    for item in items:
        key, sep, val = item.partition("=")
        key = key.strip()
        if not sep or not ENV_NAME_RE.match(key):
            raise ValueError("%r is not KEY=value" % item)
        pairs.append((key, val.strip() if not quoted else val))
    return tuple(pairs)


def split_url(value, schemes):
    """Split scheme://host:port/path or scheme:///unix/path.

    Returns (scheme, host, port, path) with host None for a unix path.

    >>> split_url("fcgi://127.0.0.1:4040/ping", ("fcgi",))
    ('fcgi', '127.0.0.1', 4040, '/ping')
    >>> split_url("unix:///run/app.sock", ("unix",))
    ('unix', None, None, '/run/app.sock')
    """
    scheme, sep, rest = value.strip().partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in schemes:
        raise ValueError("%r must start with %s" % (value, " or ".join(
            s + "://" for s in schemes)))
    if rest.startswith("/"):
        if len(rest) < 2:
            raise ValueError("%r names no socket path" % value)
        return scheme, None, None, rest
    hostport, slash, path = rest.partition("/")
    path = slash + path
    if hostport.startswith("["):
        host, bracket, port = hostport[1:].partition("]")
        if not bracket or not port.startswith(":"):
            raise ValueError("%r is not [IPv6]:PORT" % hostport)
        port = port[1:]
    else:
        host, colon, port = hostport.rpartition(":")
        if not colon:
            raise ValueError("%r needs HOST:PORT" % value)
    if not host:
        raise ValueError("%r names no host" % value)
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("%r has no valid port (1 to 65535)" % value)
    return scheme, host, int(port), path


def resolve_address(host, port):
    """(family, sockaddr) for a TCP host and port, without DNS for numbers."""
    try:
        infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ValueError("cannot resolve host %r: %s" % (
            host, getattr(exc, "strerror", None) or exc))
    family, _type, _proto, _name, sockaddr = infos[0]
    return family, sockaddr


Endpoint = namedtuple("Endpoint", ["url", "scheme", "family", "address",
                                   "path"])


def to_endpoint(value, schemes):
    """A socket endpoint: TCP host:port (resolved now) or a unix path."""
    scheme, host, port, path = split_url(value, schemes)
    if host is None:
        return Endpoint(value.strip(), scheme, socket.AF_UNIX, path, "")
    family, sockaddr = resolve_address(host, port)
    return Endpoint(value.strip(), scheme, family, sockaddr, path)


def to_healthcheck(value):
    """tcp://, fcgi://, fcgi:/// or http:// as the contract lists them."""
    endpoint = to_endpoint(value, ("tcp", "fcgi", "http"))
    if endpoint.family == socket.AF_UNIX and endpoint.scheme != "fcgi":
        raise ValueError("%r: only fcgi:/// takes a unix socket path" % value)
    if endpoint.scheme == "http" and not endpoint.path:
        endpoint = endpoint._replace(path="/")
    return endpoint


def to_socket(value):
    """tcp://HOST:PORT or unix:///path for a supervisor-held listener."""
    endpoint = to_endpoint(value, ("tcp", "unix"))
    if endpoint.scheme == "unix" and endpoint.family != socket.AF_UNIX:
        raise ValueError("%r: use unix:///absolute/path.sock" % value)
    if endpoint.scheme == "tcp" and (endpoint.family == socket.AF_UNIX
                                     or endpoint.path not in ("", "/")):
        raise ValueError("%r: use tcp://HOST:PORT" % value)
    return endpoint


def to_sockets(value):
    """socket = one address, or several (space-separated) with
    socket_pass = systemd: a tuple of Endpoints, each given once."""
    endpoints = tuple(to_socket(word) for word in value.split())
    urls = [e.url for e in endpoints]
    for url in urls:
        if urls.count(url) > 1:
            raise ValueError("%s is given twice" % url)
    return endpoints


def to_socket_pass(value):
    """stdin or systemd."""
    word = value.strip().lower()
    if word not in ("stdin", "systemd"):
        raise ValueError("%r is not one of stdin (the socket as fd 0, the "
                         "FastCGI way), systemd (fds 3, 4 ... with "
                         "LISTEN_FDS, as systemd's socket activation)"
                         % value)
    return word


def to_depends_on(value):
    """Names of services, pools or groups, separated by commas or spaces
    (the Go supervisord writes commas), each once.

    >>> to_depends_on("db, cache  db")
    ('db', 'cache')
    """
    names = []
    for name in re.split(r"[\s,]+", value.strip()):
        if not name:
            continue
        group, colon, member = name.partition(":")
        if not SERVICE_NAME_RE.match(name) and not (
                colon and SERVICE_NAME_RE.match(group) and (
                    member == "*" or SERVICE_NAME_RE.match(member))):
            raise ValueError("%r is not a service, pool or group name" % name)
        if name not in names:
            names.append(name)
    return tuple(names)


def to_syslog_socket(value):
    """A unix datagram socket path, or udp://HOST:PORT."""
    text = value.strip()
    if text.lower().startswith("udp://"):
        _scheme, host, port, path = split_url(text, ("udp",))
        if host is None or path:
            raise ValueError("%r: use udp://HOST:PORT" % value)
        family, sockaddr = resolve_address(host, port)
        return ("udp", family, sockaddr)
    if not text.startswith("/"):
        raise ValueError("%r: use an absolute socket path or udp://HOST:PORT"
                         % value)
    return ("unix", socket.AF_UNIX, text)


#: Character devices a supervisord file names as a log file, and what they
#: mean: nothing kept, or the supervisor's own stdout or stderr.
STANDARD_DEVICES = {"/dev/null": "null", "/dev/stdout": "inherit",
                    "/dev/stderr": "inherit", "/dev/fd/1": "inherit",
                    "/dev/fd/2": "inherit", "/proc/self/fd/1": "inherit",
                    "/proc/self/fd/2": "inherit"}


def to_logfile(value, base_dir, euid=None, warn=None, owners=None):
    """syslog, null, inherit, or a file path (relative to the config) that
    can be written safely (see Safe paths) by a supervisor running as
    euid.  A directory on the way that several users can change is an
    error; a link, hard link or FIFO someone put under the name itself is
    a warning through warn(message) (the file is tried again at each open,
    and output goes to syslog meanwhile), since that user could as well
    put one there later.  owners: {path: the one user besides root and us
    who can change its directory, or None} for the caller's checks."""
    text = value.strip()
    word = text.lower()
    if word in ("syslog", "null", "inherit"):
        return word
    if word == "none":  # supervisord's spelling of "discard"
        return "null"
    if text in STANDARD_DEVICES:  # what container configs write
        return STANDARD_DEVICES[text]
    if not text:
        raise ValueError("empty; use syslog, null, inherit or a file path")
    path = os.path.normpath(os.path.join(base_dir, os.path.expanduser(text)))
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        raise ValueError("directory %s does not exist; create it first"
                         % parent)
    if os.path.isdir(path):
        raise ValueError("%s is a directory; name a file" % path)
    if euid is None:
        return path
    owner, problem, entry = inspect_file_path(path, euid)
    if problem:
        raise ValueError("%s, so a planted link could redirect what "
                         "fcgiwatch writes there; let only root or one user "
                         "change each directory on the way, or log to "
                         "syslog" % problem)
    if entry and warn is not None:
        warn("%s: nothing is written through it; the lines go to syslog "
             "until it can be opened safely (remove it, then kill -USR1 "
             "the supervisor)" % entry)
    if owners is not None:
        owners[path] = owner
    return path


def to_command(value):
    """Split a command like a POSIX shell does."""
    import shlex
    try:
        argv = shlex.split(value)
    except ValueError as exc:
        raise ValueError("cannot split %r: %s" % (value, exc))
    if not argv:
        raise ValueError("empty; say what to run, e.g. command = "
                         "/usr/bin/python3 app.py")
    return tuple(argv)


def lookup_user(name):
    """A passwd entry by name or number, or ValueError."""
    import pwd
    try:
        if name.isdigit():
            return pwd.getpwuid(int(name))
        return pwd.getpwnam(name)
    except KeyError:
        raise ValueError("no such user %r; create it or fix the name" % name)


def lookup_group(name):
    """A group number by name or number, or ValueError."""
    import grp
    try:
        if name.isdigit():
            return grp.getgrgid(int(name)).gr_gid
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ValueError("no such group %r; create it or fix the name" % name)


def current_user(euid):
    """(name, uid, gid, home, shell) of the supervisor's own user."""
    import pwd
    try:
        entry = pwd.getpwuid(euid)
        return (entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir,
                entry.pw_shell or "/bin/sh")
    except KeyError:  # a uid without a passwd entry, e.g. in a container
        return (str(euid), euid, os.getegid(), os.environ.get("HOME", "/"),
                "/bin/sh")


def default_state_dir(euid):
    """The contract's default: /run as root, else XDG_RUNTIME_DIR, else ~."""
    if euid == 0:
        return "/run/fcgiwatch"
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime):
        return os.path.join(runtime, "fcgiwatch")
    return os.path.join(current_user(euid)[3], ".fcgiwatch")


def default_data_dir(euid):
    """Where what must outlive a reboot goes: /var/lib as root, else the
    XDG state directory."""
    if euid == 0:
        return "/var/lib/fcgiwatch"
    state = os.environ.get("XDG_STATE_HOME")
    if state and os.path.isabs(state):
        return os.path.join(state, "fcgiwatch")
    return os.path.join(current_user(euid)[3], ".local", "state",
                        "fcgiwatch")


def read_config_file(filename, euid=None):
    """The text of a config file (the main one or an [include]d one), or
    ConfigErrors naming why it cannot be read.

    A root supervisor (euid 0) runs what the file says as root, so the
    file must be one only root can change: it is opened once, through a
    walk that judges every directory on the way by its fd (open_config),
    and judged by what was opened, never by a path looked at twice: a user
    who swaps files under a name we checked gains nothing."""
    try:
        fd = open_config(filename, euid)
        with os.fdopen(fd, "rb") as handle:
            data = handle.read()
    except UnsafePath as exc:
        raise ConfigErrors([ConfigError(filename, None, None, "not read: %s"
                                        % exc)])
    except OSError as exc:
        hint = {errno.ENOENT: "; give the right path with -c FILE",
                errno.EACCES: "; make it readable by this user"}.get(
                    exc.errno, "")
        raise ConfigErrors([ConfigError(filename, None, None, "cannot read: "
                                        + exc.strerror + hint)])
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]  # the byte-order mark Notepad writes
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigErrors([ConfigError(
            filename, section_at(data, exc.start), None,
            "line %d: not UTF-8 text (byte 0x%02X); save the file as UTF-8"
            % (data.count(b"\n", 0, exc.start) + 1, data[exc.start]))])


def section_at(data, offset):
    """The [section] that holds the byte at offset, or None.

    >>> section_at(b"[a]\\nx = 1\\n[b]\\ny = \\xe9\\n", 18)
    'b'
    """
    found = None
    for line in data[:offset].split(b"\n"):
        line = line.strip()
        if line.startswith(b"[") and b"]" in line:
            found = line[1:line.index(b"]")].decode("utf-8", "replace")
    return found


def open_config(path, euid):
    """An fd for reading a config file.  As root: reached by walk_path in
    its strict mode (each directory owned by root and writable by nobody
    else, a sticky one such as /tmp excepted; a link followed only where
    root made it), opened with O_NOFOLLOW and O_NONBLOCK (a FIFO planted
    there cannot block us), then required to be a regular file of root's
    that nobody else may write.  Raises UnsafePath or OSError."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    if euid != 0:
        return os.open(path, flags & ~os.O_NONBLOCK)
    place = walk_path(os.path.abspath(path), 0, strict=True)
    try:
        fd = os.open(place.name, flags | os.O_NOFOLLOW, dir_fd=place.fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePath("%s changed while fcgiwatch looked at it" % path)
        raise
    finally:
        os.close(place.fd)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafePath("%s is not a regular file" % path)
        if info.st_uid != 0:
            raise UnsafePath(CONFIG_OWNER % (path, user_label(info.st_uid),
                                             path))
        if info.st_mode & 0o022:
            raise UnsafePath(CONFIG_WRITABLE % (path, "others" if
                                                info.st_mode & 0o002 else
                                                "its group", path))
    except BaseException:
        os.close(fd)
        raise
    return fd


#: Why a root supervisor refuses a config file or a directory above it.
CONFIG_OWNER = ("%s is owned by %s, not root; a root supervisor only runs a "
                "config that only root can change (chown root %s)")
CONFIG_WRITABLE = ("%s is writable by %s; a root supervisor only runs a "
                   "config that only root can change (chmod go-w %s)")


def load_config(filename, euid=None):
    """Read and parse a config file; raises ConfigErrors."""
    if euid is None:
        euid = os.geteuid()
    filename = os.path.abspath(filename)
    return parse_config(read_config_file(filename, euid), filename, euid)


def parse_config(text, filename, euid=None):
    """Parse config text into a Config, or raise ConfigErrors listing every
    problem found, each naming file, section and key.

    Read the way supervisord reads its files, so that one means the same in
    both: ';' or '#' at the start of a line or after white space starts a
    comment, a key or section given twice is the later one (a warning),
    [include] reads more files, and supervisord's own sections are used for
    what fcgiwatch has and otherwise noted.  Warnings never stop a start:
    they come back in Config.warnings.

    Nothing here starts a process: --check, the supervisor and reload all
    call this first and act only on a Config that came back whole.
    """
    if euid is None:
        euid = os.geteuid()
    errors, warnings, files = [], [], {}

    def error(section, key, message):
        errors.append(ConfigError(files.get(section, filename), section, key,
                                  message))

    def warn(section, key, message):
        warnings.append(ConfigError(files.get(section, filename), section,
                                    key, message))

    if not text.strip():
        error(None, None, "the file is empty; add a [program:NAME] section "
              "with a command = line")
        raise ConfigErrors(errors)
    ini = IniReader(errors, warnings, files, euid)
    ini.read(text, filename)
    if errors:
        raise ConfigErrors(errors)

    base_dir = os.path.dirname(os.path.abspath(filename))
    supervisord = parse_supervisord_section(ini, base_dir, euid, error, warn)
    supervisord["rpc"] = parse_http_servers(ini, base_dir, euid, error, warn,
                                            supervisord["identifier"])
    globals_ = parse_globals(ini.values.get(OWN_SECTION, {}), filename,
                             base_dir, euid, error, supervisord, warn)
    services, seen, instances, sockets = [], {}, {}, {}
    groups = {}
    env_names = environment_names()  # once, not once a section
    reported = set()

    def error_once(section, key, message):
        # A pool's instances share their section: one report each.
        if (section, key, message) not in reported:
            reported.add((section, key, message))
            error(section, key, message)

    def warn_once(section, key, message):
        if (section, key, message) not in reported:
            reported.add((section, key, message))
            warn(section, key, message)
    for section in ini.order:
        kind, _colon, name = section.partition(":") if ":" in section \
            else ("", "", section)
        if section in (OWN_SECTION, "supervisord", "include"):
            continue
        if section in ("unix_http_server", "inet_http_server"):
            continue  # parse_http_servers
        if section in SUPERVISORD_IGNORED or kind in ("rpcinterface",
                                                      "ctlplugin"):
            if globals_.rpc is None or section == "ctlplugin":
                warn(section, None, "supervisord's own section; not used by "
                     "fcgiwatch (its control commands and --status do "
                     "that; supervisorctl works where [unix_http_server] "
                     "names a socket)")
            continue
        if kind == "eventlistener":
            warn(section, None, "event listeners are not run; "
                 "alert_command in [fcgiwatch] does what crashmail and "
                 "superlance do")
            continue
        if kind == "group":
            groups[name] = section
            continue
        if kind not in ("", "program", "fcgi-program"):
            error(section, None, "not a section fcgiwatch knows: use "
                  "[program:NAME], [fcgi-program:NAME], [group:NAME] or "
                  "[NAME]")
            continue
        if not SERVICE_NAME_RE.match(name):
            error(section, None, "%r is not a service name; use [NAME] or "
                  "[program:NAME] with letters, digits, '_', '.', '-'" % name)
            continue
        if name in seen:
            error(section, None, "service %r is already defined in [%s]; "
                  "keep one of them" % (name, seen[name]))
            continue
        seen[name] = section
        flavour = Flavour(
            supervisord=bool(kind), fcgi=kind == "fcgi-program",
            here=os.path.dirname(os.path.abspath(files.get(section,
                                                           filename))),
            cuts=ini.cuts, defaults=supervisord["service_defaults"],
            warn=warn_once, environment=supervisord["environment"],
            childlogdir=supervisord["childlogdir"],
            state_dir=globals_.state_dir, env_names=env_names)
        # Relative paths, and the default directory, are the directory of
        # the file that holds the section: its %(here)s.
        for config in parse_program(ini.values[section], section, name,
                                    globals_, flavour.here, euid,
                                    error_once, flavour) or ():
            if config.name in instances:
                error(section, "process_name", "instance %r is already "
                      "defined in [%s]; give each a name of its own" % (
                          config.name, instances[config.name]))
                continue
            instances[config.name] = section
            taken = [(e.url, sockets[e.url][1]) for e in config.socket or ()
                     if sockets.setdefault(e.url, (config.program, section))[
                         0] != config.program]
            if taken:
                error(section, "socket", "%s is [%s]'s socket already; a "
                      "socket belongs to one program (its instances share "
                      "it)" % taken[0])
                continue
            services.append(config)
    group_members = parse_groups(ini, groups, seen, error)
    services = [apply_group_priority(s, ini, groups, group_members)
                for s in services]
    if not seen and not errors:
        if "supervisord" in ini.values or "include" in ini.values:
            # supervisord runs such a file, and programs come with the
            # next reload (or supervisorctl update).
            warn(None, None, "no services defined yet; add [program:NAME] "
                 "sections (here or in an included file), then --reload")
        else:
            error(None, None, "no services defined; add a [program:NAME] "
                  "section with a command = line")
    if not errors:
        services = resolve_dependencies(services, group_members, error)
    if errors:
        raise ConfigErrors(errors)
    services.sort(key=lambda s: (s.priority, s.name))
    return Config(globals_, tuple(services), tuple(warnings),
                  tuple(sorted(group_members.items())),
                  tuple(sorted(files.items())))


def resolve_dependencies(services, group_members, error):
    """Each service's depends_on as the instance names it picks (a pool's
    name is all its instances, a group's all its programs'), checked: an
    unknown name or a cycle is an error that names it."""
    rows = [(s.name, s.program) for s in services]
    groups = tuple(sorted(group_members.items()))
    resolved = []
    for config in services:
        if not config.depends_on:
            resolved.append(config)
            continue
        try:
            names = choose_services(list(config.depends_on), rows, groups)
        except UsageError as exc:
            error(config.section, "depends_on", "%s; name services, pools "
                  "or groups of this config" % exc)
            continue
        if config.name in names:
            error(config.section, "depends_on", "%s depends on itself (%s "
                  "names it)" % (config.name, " ".join(config.depends_on)))
            continue
        resolved.append(config._replace(depends_on=tuple(names)))
    cycle = dependency_cycle(resolved)
    if cycle:
        first = next(s for s in resolved if s.name == cycle[0])
        error(first.section, "depends_on", "a cycle: %s; a service cannot "
              "wait for one that waits for it" % " -> ".join(cycle))
    return resolved


def dependency_cycle(services):
    """One cycle of depends_on as [a, b, ..., a], or None.

    >>> S = namedtuple("S", "name depends_on")
    >>> dependency_cycle([S("a", ("b",)), S("b", ("c",)), S("c", ("a",))])
    ['a', 'b', 'c', 'a']
    """
    needs = dict((s.name, s.depends_on) for s in services)
    marks = {}  # name -> "open" while on the path, then "done"
    for service in services:
        if service.name in marks:
            continue
        # Depth first without recursion: a chain may be thousands long.
        path, stack = [service.name], [iter(needs[service.name])]
        marks[service.name] = "open"
        while stack:
            name = next(stack[-1], None)
            if name is None:
                marks[path.pop()] = "done"
                stack.pop()
            elif marks.get(name) == "open":
                return path[path.index(name):] + [name]
            elif name in needs and name not in marks:
                marks[name] = "open"
                path.append(name)
                stack.append(iter(needs[name]))
    return None


def start_order(services):
    """Service names in the order they can start: each after what it
    depends on, else by priority and name (the order of services).

    >>> S = namedtuple("S", "name depends_on")
    >>> start_order([S("web", ("db",)), S("db", ()), S("cron", ())])
    ['db', 'web', 'cron']
    """
    needs = dict((s.name, s.depends_on) for s in services)
    order, placed = [], set()
    for service in services:
        if service.name in placed:
            continue
        placed.add(service.name)
        path, stack = [service.name], [iter(needs[service.name])]
        while stack:
            name = next(stack[-1], None)
            if name is None:
                order.append(path.pop())
                stack.pop()
            elif name in needs and name not in placed:
                placed.add(name)
                path.append(name)
                stack.append(iter(needs[name]))
    return order


#: supervisord's sections that hold nothing for fcgiwatch (supervisorctl's
#: own and the RPC interface's factory are read where a client is served).
SUPERVISORD_IGNORED = ("supervisorctl",)

#: What a service section is, beyond its keys: supervisord's or ours, and
#: what the file around it says.
Flavour = namedtuple("Flavour", [
    "supervisord", "fcgi", "here", "cuts", "defaults", "warn",
    "environment", "childlogdir", "state_dir", "env_names"])

#: [supervisord] keys fcgiwatch uses (the rest are noted as ignored).
SUPERVISORD_USED = ("logfile", "pidfile", "childlogdir", "environment",
                    "umask", "minfds", "minprocs", "identifier")

#: Why a supervisord service key that fcgiwatch does not have is ignored,
#: where a word helps.
SUPERVISORD_HINTS = {
    "stdout_events_enabled": "events are not sent; see alert_command",
    "stderr_events_enabled": "events are not sent; see alert_command",
    "stdout_capture_maxbytes": "there is no capture mode",
    "stderr_capture_maxbytes": "there is no capture mode",
    "stdout_syslog": "write stdout_logfile = syslog instead",
    "stderr_syslog": "write stderr_logfile = syslog instead",
    "serverurl": "there is no event listener to give it to",
}


class IniReader:
    """The sections of a config file and the files it includes, read with
    supervisord's rules: values (later ones win), the file of each
    section, and the values a comment cut short (for the error that a
    command split then gives)."""

    def __init__(self, errors, warnings, files, euid):
        self.errors, self.warnings, self.files = errors, warnings, files
        self.euid = euid          # as root, included files are judged too
        self.order, self.values = [], {}
        self.cuts = {}            # (section, key) -> the value uncut
        self.read_files = set()

    def problem(self, kind, filename, section, key, message):
        kind.append(ConfigError(filename, section, key, message))

    def read(self, text, filename, depth=0):
        import configparser
        self.read_files.add(os.path.abspath(filename))

        def parser(inline):
            # No DEFAULT magic: a [DEFAULT] section would silently add its
            # keys to every service.  No configparser interpolation:
            # supervisord's expansions are done per instance.
            return configparser.ConfigParser(
                interpolation=None, strict=False, default_section="\0none",
                delimiters=("=", ":"), comment_prefixes=("#", ";"),
                inline_comment_prefixes=("#", ";") if inline else None)
        cut, whole = parser(True), parser(False)
        try:
            cut.read_string(text, filename)
            whole.read_string(text, filename)
        except configparser.MissingSectionHeaderError as exc:
            self.problem(self.errors, filename, None, None, "line %d: text "
                         "before the first [section]: %r; is this an INI "
                         "file?" % (exc.lineno, exc.line.strip()))
            return
        except configparser.ParsingError as exc:
            for lineno, line in exc.errors:
                self.problem(self.errors, filename, None, None, "line %d: "
                             "not a key = value line or [section]: %s" % (
                                 lineno, line.strip()))
            return
        except configparser.Error as exc:
            self.problem(self.errors, filename, None, None,
                         str(exc).splitlines()[0])
            return
        for section, key, lineno in repeated_keys(text):
            self.problem(self.warnings, filename, section, key, "line %d: "
                         "given again in this %s; the later one counts, as "
                         "in supervisord" % (lineno, "section" if key
                                             else "file"))
        for section in cut.sections():
            if section in self.values and self.files.get(section) != \
                    filename:
                self.problem(self.warnings, filename, section, None,
                             "also in %s; the values here count where both "
                             "give one" % self.files[section])
            items = dict(cut.items(section))
            self.values.setdefault(section, {}).update(items)
            self.files[section] = filename
            if section not in self.order:
                self.order.append(section)
            for key, value in items.items():
                if whole.has_option(section, key) and \
                        whole.get(section, key) != value:
                    self.cuts[(section, key)] = whole.get(section, key)
        if cut.has_section("include"):
            self.include(cut.get("include", "files", fallback=""), filename,
                         depth)

    def include(self, patterns, filename, depth):
        """[include] files = GLOB ...: read each file it names."""
        if depth >= INCLUDE_DEPTH:
            self.problem(self.errors, filename, "include", "files",
                         "includes nest more than %d deep; is one file "
                         "including itself?" % INCLUDE_DEPTH)
            return
        for pattern in patterns.split():
            if not include_matches(pattern, filename):
                self.problem(self.warnings, filename, "include", "files",
                             "%s matches no file: is it a typo? What it "
                             "should bring is not in the config" % (
                                 os.path.join(os.path.dirname(filename),
                                              pattern)))
        for path in included_files(patterns, filename):
            if path in self.read_files:
                continue
            try:
                text = read_config_file(path, self.euid)
            except ConfigErrors as exc:
                for problem in exc.errors:
                    self.problem(self.errors, filename, "include", "files",
                                 "%s: %s" % (path, problem.message))
                continue
            self.read(text, path, depth + 1)


#: How deep [include]s may nest: deeper, a file most likely includes
#: itself by another name.
INCLUDE_DEPTH = 10


def included_files(patterns, filename):
    """The files [include] files = GLOB ... names: relative to the
    including file, each glob in sorted order (one that matches nothing
    is fine), directories left out.  Read by the supervisor and, for
    state_dir, by its clients."""
    for pattern in patterns.split():
        for path in include_matches(pattern, filename):
            yield path


def include_matches(pattern, filename):
    """The files one glob of [include] names, sorted."""
    import glob
    here = os.path.dirname(os.path.abspath(filename))
    return [os.path.abspath(path) for path in sorted(glob.glob(
        os.path.join(here, os.path.expanduser(pattern))))
        if not os.path.isdir(path)]


def repeated_keys(text):
    """(section, key or None, line) for each section header or key that
    appears a second time in one file: supervisord takes the later one,
    and so do we, with a word.

    >>> list(repeated_keys("[a]\\nx=1\\nx = 2\\n[a]\\n"))
    [('a', 'x', 3), ('a', None, 4)]
    """
    seen_sections, seen_keys, section = set(), set(), None
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped[0] in "#;" or line[0] in " \t":
            continue
        if stripped.startswith("[") and "]" in stripped:
            section = stripped[1:stripped.index("]")].strip()
            if section in seen_sections:
                yield section, None, number
            seen_sections.add(section)
            continue
        cut = min(i for i in (stripped.find("="), stripped.find(":"),
                              len(stripped)) if i >= 0)
        key = stripped[:cut].strip().lower()
        if section is not None and key:
            if (section, key) in seen_keys:
                yield section, key, number
            seen_keys.add((section, key))


def parse_supervisord_section(ini, base_dir, euid, error, warn):
    """What [supervisord] says that fcgiwatch uses: logfile (as log_file),
    pidfile, childlogdir, environment (added to every service's), umask
    (the services' default), minfds and minprocs (raised as rlimits)."""
    values = ini.values.get("supervisord", {})
    here = os.path.dirname(os.path.abspath(ini.files.get(
        "supervisord", base_dir + "/x")))
    names = expansion_names("supervisord", here, 1)
    out = {"log_file": None, "pidfile": None, "childlogdir": None,
           "environment": (), "minfds": None, "minprocs": None,
           "service_defaults": {}, "identifier": "supervisor"}
    ignored = sorted(k for k in values if k not in SUPERVISORD_USED)
    if ignored:
        warn("supervisord", None, "not used by fcgiwatch: %s (the "
             "supervisor runs as whoever starts it, logs to syslog and "
             "log_file, and never daemonizes unless told --daemon)"
             % ", ".join(ignored))

    def value(key):
        try:
            return expand(values[key], names)
        except ValueError as exc:
            error("supervisord", key, str(exc))
            return None
    for key, function, target in (
            ("logfile", lambda v: to_logfile(
                v, here, euid, lambda m: warn("supervisord", "logfile", m)),
             "log_file"),
            # The pidfile is replaced whole, by a rename that never
            # follows what is under the name: nothing there to warn of.
            ("pidfile", lambda v: to_logfile(v, here, euid), "pidfile"),
            ("childlogdir", lambda v: existing_directory(v, here),
             "childlogdir"),
            ("environment", to_environment, "environment"),
            ("minfds", lambda v: to_int(v, 1), "minfds"),
            ("minprocs", lambda v: to_int(v, 1), "minprocs"),
            ("identifier", lambda v: v.strip() or "supervisor",
             "identifier"),
            ("umask", to_octal, None)):
        if key not in values:
            continue
        text = value(key)
        if text is None:
            continue
        try:
            converted = function(text)
        except ValueError as exc:
            error("supervisord", key, str(exc))
            continue
        if key in ("logfile", "pidfile") and converted in (
                "syslog", "null", "inherit"):
            continue  # supervisord's "syslog" logfile: ours already is
        if target is None:
            out["service_defaults"]["umask"] = text.strip()
        else:
            out[target] = converted
    return out


def parse_http_servers(ini, base_dir, euid, error, warn, identifier):
    """supervisord's [unix_http_server] and [inet_http_server], as an
    RpcConfig (None when neither is served).  A TCP port is served only on
    a loopback address and with a password: anything else is what
    CVE-2019-12105 was (anyone who reaches the port restarts services),
    so it is a warning and nothing listens."""
    unix = unix_auth = inet = inet_auth = None

    def values_of(section):
        here = os.path.dirname(os.path.abspath(ini.files.get(
            section, base_dir + "/x")))
        names = expansion_names(section, here, 1)
        out = {}
        for key, text in ini.values.get(section, {}).items():
            try:
                out[key] = expand(text, names).strip()
            except ValueError as exc:
                error(section, key, str(exc))
        return here, out

    def auth(section, values):
        user, password = values.get("username"), values.get("password")
        if bool(user) != bool(password):
            error(section, "username" if password else "password",
                  "give both username and password, or neither")
            return None
        return (user, password) if user else None
    if "unix_http_server" in ini.values:
        section = "unix_http_server"
        here, values = values_of(section)
        unknown = sorted(set(values) - set(("file", "chmod", "chown",
                                            "username", "password")))
        if unknown:
            warn(section, None, "not used by fcgiwatch: %s"
                 % ", ".join(unknown))
        path = values.get("file")
        mode, uid, gid = 0o700, euid, os.getegid()
        try:
            if not path:
                raise ValueError("name the socket supervisorctl connects "
                                 "to, e.g. file = /run/supervisor.sock")
            path = os.path.normpath(os.path.join(here, os.path.expanduser(
                path)))
            if not os.path.isdir(os.path.dirname(path)):
                raise ValueError("directory %s does not exist; create it "
                                 "first" % os.path.dirname(path))
            if len(path.encode()) > 100:
                raise ValueError("%s is too long for a unix socket path"
                                 % path)
        except ValueError as exc:
            error(section, "file", str(exc))
        try:
            if "chmod" in values:
                mode = to_octal(values["chmod"]) & 0o777
        except ValueError as exc:
            error(section, "chmod", str(exc))
        try:
            if values.get("chown"):
                user, _colon, group = values["chown"].partition(":")
                entry = lookup_user(user)
                uid = entry.pw_uid
                gid = lookup_group(group) if group else entry.pw_gid
                if euid != 0 and (uid, gid) != (euid, os.getegid()):
                    raise ValueError("only root may give the socket to "
                                     "another user or group")
        except ValueError as exc:
            error(section, "chown", str(exc))
        unix = (path, mode, uid, gid)
        unix_auth = auth(section, values)
    if "inet_http_server" in ini.values:
        section = "inet_http_server"
        _here, values = values_of(section)
        host, _colon, port = values.get("port", "").rpartition(":")
        host = host.strip("[]")
        why = None
        if not port.isdigit() or not 0 < int(port) < 65536:
            error(section, "port", "%r is not host:port, e.g. "
                  "127.0.0.1:9001" % values.get("port", ""))
        elif host not in ("127.0.0.1", "::1", "localhost"):
            why = "it would listen on %s, not on 127.0.0.1 or ::1 only" % (
                host if host not in ("", "*") else "every address")
        elif not values.get("username") or not values.get("password"):
            why = "it has no username and password"
        else:
            inet = (host, int(port))
            inet_auth = auth(section, values)
        if why:
            warn(section, "port", "not served: %s, and anyone who reaches "
                 "it could control every service (CVE-2019-12105); use "
                 "[unix_http_server], or 127.0.0.1 with a username and "
                 "password" % why)
    if unix is None and inet is None:
        return None
    return RpcConfig(unix, unix_auth, inet, inet_auth, identifier)


def existing_directory(value, base_dir):
    path = os.path.normpath(os.path.join(base_dir, os.path.expanduser(
        value.strip())))
    if not os.path.exists(path):
        raise ValueError("%s does not exist; create it or fix the path"
                         % path)
    if not os.path.isdir(path):
        raise ValueError("%s is not a directory; fix the path" % path)
    return path


def parse_groups(ini, groups, programs, error):
    """{group name: (program names)} from the [group:NAME] sections; a
    program named there must exist."""
    members = {}
    for name, section in groups.items():
        if not SERVICE_NAME_RE.match(name):
            error(section, None, "%r is not a group name" % name)
            continue
        listed = [p.strip() for p in ini.values[section].get(
            "programs", "").split(",") if p.strip()]
        if not listed:
            error(section, "programs", "missing or empty; name the "
                  "programs of the group, e.g. programs = web,worker")
            continue
        unknown = [p for p in listed if p not in programs]
        if unknown:
            error(section, "programs", "no such program: %s" % ", ".join(
                unknown))
            continue
        for key in ini.values[section]:
            if key not in ("programs", "priority"):
                error(section, key, "unknown key; a group takes programs "
                      "and priority")
        try:
            to_int(ini.values[section].get("priority", "0"), None)
        except ValueError as exc:
            error(section, "priority", str(exc))
            continue
        members[name] = tuple(listed)
    return members


def apply_group_priority(config, ini, groups, members):
    """A group's priority is its programs' (supervisord starts a group's
    processes at the group's priority)."""
    for name, programs in members.items():
        if config.program in programs:
            text = ini.values[groups[name]].get("priority")
            if text is not None:
                return config._replace(priority=to_int(text, None))
    return config


def multiline_message():
    return ("the value goes on over several lines (an indented line "
            "continues the key above it); put it on one line")


def parse_globals(values, filename, base_dir, euid, error, supervisord,
                  warn):
    """The [fcgiwatch] section, with the contract's defaults (and what
    [supervisord] says where [fcgiwatch] says nothing)."""
    values = dict(values)
    for key in list(values):
        if key not in GLOBAL_KEYS:
            error(OWN_SECTION, key, "unknown key; known keys are "
                  + ", ".join(GLOBAL_KEYS))
        elif "\n" in values[key].strip():
            error(OWN_SECTION, key, multiline_message())
            del values[key]

    def convert(key, function, default):
        if key not in values:
            return default
        try:
            return function(values[key])
        except ValueError as exc:
            error(OWN_SECTION, key, str(exc))
            return default

    def directory(value):
        path = os.path.expanduser(value.strip())
        if not path:
            raise ValueError("empty; name a directory")
        return os.path.normpath(os.path.join(base_dir, path))

    def facility(value):
        word = value.strip().lower()
        if word.startswith("log_"):
            word = word[4:]
        if word not in SYSLOG_FACILITIES:
            raise ValueError("%r is not a syslog facility; use e.g. daemon, "
                             "user, local0" % value)
        return SYSLOG_FACILITIES[word]

    def log_file(value, appended=True):
        path = to_logfile(value, base_dir, euid, lambda m: warn(
            OWN_SECTION, "log_file", m) if appended else None)
        if path in ("syslog", "null", "inherit"):
            raise ValueError("name a file path")
        return path

    def path_list(value):
        text = value.strip()
        if not text:
            raise ValueError("empty; give directories separated by ':'")
        return text

    return GlobalConfig(
        filename=filename,
        state_dir=convert("state_dir", directory, default_state_dir(euid)),
        syslog=convert("syslog", to_bool, True),
        syslog_facility=convert("syslog_facility", facility, 3),
        syslog_socket=convert("syslog_socket", to_syslog_socket,
                              ("unix", socket.AF_UNIX, "/dev/log")),
        log_file=convert("log_file", log_file, supervisord["log_file"]),
        path=convert("path", path_list, DEFAULT_PATH),
        pidfile=supervisord["pidfile"],
        minfds=convert("minfds", lambda v: to_int(v, 1),
                       supervisord["minfds"]),
        minprocs=supervisord["minprocs"],
        metrics_file=convert("metrics_file", lambda v: log_file(v, False),
                             None),
        alert_command=convert("alert_command", to_command, None),
        alert_interval=convert("alert_interval", to_seconds, 300.0),
        data_dir=convert("data_dir", directory, default_data_dir(euid)),
        rpc=supervisord["rpc"])


def expand(value, names):
    """value with supervisord's %(NAME)s expansions done.  Raises
    ValueError naming an unknown name or a format that does not fit.

    >>> expand("app_%(process_num)02d %%s %s", {"process_num": 3})
    'app_03 %s %s'
    """
    def one(match):
        if match.group(0) == "%%":
            return "%"
        name, spec = match.group(1), match.group(2)
        if any(len(digits) > 2 for digits in re.findall("[0-9]+", spec)):
            raise ValueError("%%(%s)%s: a width or precision over 99 "
                             "characters" % (name, spec))
        if name not in names and name.startswith("ENV_"):
            raise ValueError("%%(%s)s: the supervisor's environment has no "
                             "%s (it is what fcgiwatch was started with: "
                             "cron's is small); set it there, or write the "
                             "value" % (name, name[4:]))
        if name not in names:
            raise ValueError("%%(%s) is not a name fcgiwatch expands; it "
                             "knows %s, and ENV_X for the variable X" % (
                                 name, ", ".join(sorted(
                                     n for n in names
                                     if not n.startswith("ENV_")))))
        try:
            return ("%" + spec) % (names[name],)
        except (TypeError, ValueError, OverflowError):
            raise ValueError("%%(%s)%s does not fit its value %r" % (
                name, spec, names[name]))
    return EXPANSION_RE.sub(one, value)


def expansion_names(program, base_dir, numprocs, environment=None):
    """The names a program's values may expand (process_num is added for
    each instance).  environment: the ENV_ names, made once a config."""
    names = dict(environment or environment_names())
    names.update(here=base_dir, program_name=program, group_name=program,
                 numprocs=numprocs, host_node_name=socket.gethostname())
    return names


def environment_names():
    """ENV_X for each of the supervisor's environment variables X."""
    return dict(("ENV_" + k, v) for k, v in os.environ.items())


def parse_program(given, section, program, globals_, base_dir, euid,
                  error, flavour=None):
    """The instances of one program section (numprocs of them, named by
    process_name), each with the section's values expanded for its
    process_num: [ServiceConfig], or None after reporting."""
    ok = True
    # Expanded first, as supervisord does (numprocs = %(ENV_WORKERS)s).
    names = expansion_names(program, flavour.here if flavour else base_dir,
                            1, flavour and flavour.env_names)
    try:
        numprocs = to_int(expand(given.get("numprocs", "1"), names), 1)
        if numprocs > MAX_NUMPROCS:
            raise ValueError("%r is more than %d instances" % (
                given["numprocs"], MAX_NUMPROCS))
    except ValueError as exc:
        error(section, "numprocs", str(exc))
        numprocs, ok = 1, False
    try:
        first = to_int(expand(given.get("numprocs_start", "0"), names))
    except ValueError as exc:
        error(section, "numprocs_start", str(exc))
        first, ok = 0, False
    template = given.get("process_name", SERVICE_DEFAULTS["process_name"])
    if numprocs > 1 and "%(process_num)" not in template:
        error(section, "process_name", "must contain %%(process_num)d (or "
              "%%(process_num)02d ...) when numprocs is more than 1, so that "
              "each instance has a name of its own (now %r)" % template)
        ok = False
    if not ok:
        return None
    names = expansion_names(program, flavour.here if flavour else base_dir,
                            numprocs, flavour and flavour.env_names)
    instances = []
    for number in range(first, first + numprocs):
        names["process_num"] = number
        expanded = {}
        for key, value in given.items():
            try:
                expanded[key] = expand(value, names)
            except ValueError as exc:
                error(section, key, str(exc))
                ok = False
        if not ok:
            return None
        name = expanded.get("process_name", program).strip()
        if not SERVICE_NAME_RE.match(name):
            error(section, "process_name", "%r is not a service name; use "
                  "letters, digits, '_', '.', '-'" % name)
            return None
        config = parse_service(expanded, section, name, globals_, base_dir,
                               euid, error, flavour)
        if config is None:
            return None
        instances.append(config._replace(
            program=program, process_num=number, numprocs=numprocs))
    return instances


def parse_service(given, section, name, globals_, base_dir, euid, error,
                  flavour=None):
    """One service instance, from its section's values (expanded), as a
    ServiceConfig, or None after reporting its problems through
    error(section, key, message).  flavour: a supervisord section
    ([program:x], [fcgi-program:x]) takes supervisord's defaults where
    they differ, and ignores (with a warning) a key fcgiwatch has not."""
    bad = False
    lenient = flavour is not None and flavour.supervisord
    for key in given:
        if key not in SERVICE_DEFAULTS and lenient:
            hint = SUPERVISORD_HINTS.get(key)
            flavour.warn(section, key, "ignored: fcgiwatch has no such key%s"
                         % ("; " + hint if hint else ""))
        elif key not in SERVICE_DEFAULTS:
            error(section, key, "unknown key; see the config reference in "
                  "README.md for the keys a service takes")
            bad = True
        elif "\n" in given[key].strip() and key not in MULTILINE_KEYS:
            error(section, key, multiline_message())
            bad = True
    raw = dict(SERVICE_DEFAULTS)
    if flavour is not None:
        raw.update(flavour.defaults)
    if lenient:
        # supervisord's default: a one-shot job that exits 0 (a migration,
        # a cache warm-up) is not run again.
        raw["autorestart"] = "unexpected"
    raw.update((k, v) for k, v in given.items() if k in SERVICE_DEFAULTS)
    trusted = auto_log_files(raw, name, flavour)
    if flavour is not None and flavour.fcgi and not raw["socket"].strip():
        error(section, "socket", "missing: an [fcgi-program:x] section "
              "needs socket = tcp://HOST:PORT or unix:///PATH")
        bad = True

    def report(key, message):
        uncut = flavour.cuts.get((section, key)) if flavour else None
        if uncut is not None:
            message += ("; note that a ';' or '#' after white space starts "
                        "a comment, as in supervisord, and cut this value "
                        "from %r: write it with no space before it" % uncut)
        error(section, key, message)
    owners = {}
    values = convert_service_keys(raw, base_dir, euid, report, trusted,
                                  lambda key, message: flavour.warn(
                                      section, key, message)
                                  if flavour else None, owners)
    user = resolve_run_user(raw, euid, report)
    socket_owner = resolve_socket_owner(raw, euid, report)
    if bad or values is None or user is None or socket_owner is False:
        return None
    user_name, uid, gid, groups, home, shell = user
    if not log_owners_fit(values, owners, euid if uid is None else uid,
                          user_name, report):
        return None
    env = {"PATH": globals_.path, "HOME": home, "USER": user_name,
           "LOGNAME": user_name, "SHELL": shell}
    if flavour is not None:
        env.update(flavour.environment)  # [supervisord] environment
    env.update(values["environment"])
    values.update(
        name=name, section=section, command=raw["command"].strip(),
        argv=values.pop("command"), user=user_name, uid=uid, gid=gid,
        groups=groups, home=home, shell=shell,
        env=tuple(sorted(env.items())), socket_owner=socket_owner,
        program=name, process_num=0, numprocs=1)
    for key in POOL_KEYS[1:]:
        values.pop(key, None)
    return ServiceConfig(**values)


#: Service keys converted by one function of their value alone.
SERVICE_CONVERTERS = (
    ("umask", to_octal), ("autostart", to_bool),
    ("autorestart", to_autorestart), ("exitcodes", to_exitcodes),
    ("startsecs", to_seconds), ("startretries", to_retries),
    ("backoff_max", to_interval), ("stopsignal", to_signal),
    ("stopwaitsecs", to_seconds), ("stopasgroup", to_bool),
    ("killasgroup", to_bool), ("redirect_stderr", to_bool),
    ("stdout_logfile_maxbytes", to_byte_size),
    ("stdout_logfile_backups", lambda v: to_count(v, MAX_BACKUPS)),
    ("healthcheck_interval", to_interval),
    ("healthcheck_timeout", to_seconds),
    ("healthcheck_retries", lambda v: to_int(v, 1)),
    ("priority", lambda v: to_int(v, None)),
    ("socket_mode", to_octal), ("ready", to_ready),
    ("watchdog_secs", to_watchdog), ("limits", to_limits),
    ("socket_pass", to_socket_pass), ("depends_on", to_depends_on),
    ("dependency_restart", to_bool),
    ("stdout_logfile_timestamps", to_bool),
    ("stdout_logfile_compress", to_bool))


def auto_log_files(raw, name, flavour):
    """supervisord's AUTO for a log file: NAME-stdout.log (-stderr.log) in
    [supervisord] childlogdir, else in state_dir/logs, which the supervisor
    makes.  Returns the paths that need no check of their directory now."""
    trusted = set()
    for stream in ("stdout", "stderr"):
        key = stream + "_logfile"
        if raw[key].strip().upper() != "AUTO":
            continue
        if flavour is not None and flavour.childlogdir:
            directory = flavour.childlogdir
        else:
            directory = os.path.join(
                flavour.state_dir if flavour else default_state_dir(
                    os.geteuid()), AUTO_LOG_DIR)
            trusted.add(os.path.join(directory, "%s-%s.log" % (name,
                                                               stream)))
        raw[key] = os.path.join(directory, "%s-%s.log" % (name, stream))
    return trusted


def log_owners_fit(values, owners, run_uid, user_name, report):
    """A service's log file may be in a directory that one user besides
    root can change only when that user is the one it runs as: the owner
    of the directory can put a file of theirs under the name, and the
    supervisor would then append the service's output to a file they can
    read.  False after reporting."""
    ok = True
    for key in ("stdout_logfile", "stderr_logfile"):
        owner = owners.get(values.get(key))
        if owner is not None and owner != run_uid:
            report(key, "%s is in a directory that %s can change, who could "
                   "then read what this service (run as %s) writes; use a "
                   "directory of root's or of %s" % (
                       values[key], user_label(owner), user_name, user_name))
            ok = False
    return ok


def convert_service_keys(raw, base_dir, euid, report, trusted=(),
                         notice=None, owners=None):
    """The values of a service's own keys (not user or socket owner), or
    None after reporting each problem through report(key, message) (and
    each warning through notice(key, message)).  trusted: log file paths
    in state_dir, made by the supervisor; owners: filled in as to_logfile
    does."""
    values, ok = {}, [True]

    def convert(key, function, *args):
        try:
            values[key] = function(raw[key], *args)
        except ValueError as exc:
            report(key, str(exc))
            ok[0] = False

    if raw["command"] is None:
        report("command", "missing; say what to run, e.g. command = "
               "/usr/bin/python3 app.py")
        ok[0] = False
    else:
        convert("command", to_command)
    for key, function in SERVICE_CONVERTERS:
        convert(key, function)
    for key, function in (("healthcheck", to_healthcheck),
                          ("socket", to_sockets),
                          ("environment", to_environment)):
        if raw[key].strip():
            convert(key, function)
        else:
            values[key] = () if key == "environment" else None
    if raw["stdout_logfile_maxage"].strip():
        convert("stdout_logfile_maxage", to_age)
    else:
        values["stdout_logfile_maxage"] = None
    if raw["max_memory"].strip():
        convert("max_memory", to_byte_size)
    else:
        values["max_memory"] = None
    text = raw["environment_file"].strip()
    # Read at each start (a rotated secret is picked up by a restart):
    # here only where it is.
    values["environment_file"] = os.path.normpath(os.path.join(
        base_dir, os.path.expanduser(text))) if text else None

    def log_file(value, key):
        if value.strip() in trusted:
            return value.strip()
        return to_logfile(value, base_dir, euid, lambda message: notice(
            key, message) if notice else None, owners)
    convert("stdout_logfile", log_file, "stdout_logfile")
    # stderr: its own keys where given, else stdout's (and with
    # redirect_stderr, stdout's destination whatever was given).
    for key, function, args in (
            ("stderr_logfile", log_file, ("stderr_logfile",)),
            ("stderr_logfile_maxbytes", to_byte_size, ()),
            ("stderr_logfile_backups", to_count, (MAX_BACKUPS,)),
            ("stderr_logfile_timestamps", to_bool, ()),
            ("stderr_logfile_maxage", to_age, ()),
            ("stderr_logfile_compress", to_bool, ())):
        if raw[key].strip():
            convert(key, function, *args)
        else:
            values[key] = values.get(key.replace("stderr", "stdout"))
    if values.get("redirect_stderr"):
        values["stderr_logfile"] = values.get("stdout_logfile")
    endpoints = values.get("socket") or ()
    if len(endpoints) > 1 and values.get("socket_pass") == "stdin":
        report("socket", "%d addresses, and fd 0 holds one: with several, "
               "write socket_pass = systemd (fds 3, 4 ...)" % len(endpoints))
        ok[0] = False
    if values.get("socket_pass") == "systemd" and not raw["socket"].strip():
        report("socket_pass", "systemd, but there is no socket to pass; "
               "add socket = tcp://HOST:PORT")
        ok[0] = False
    if values.get("watchdog_secs") and values.get("ready") == "startsecs":
        report("watchdog_secs", "needs ready = notify: the watchdog is the "
               "program's WATCHDOG=1 messages to $NOTIFY_SOCKET")
        ok[0] = False
    directory = base_dir
    if raw["directory"].strip():
        directory = os.path.normpath(os.path.join(
            base_dir, os.path.expanduser(raw["directory"].strip())))
        if not os.path.isdir(directory):
            report("directory", "%s does not exist or is not a directory; "
                   "create it or fix the path" % directory)
            ok[0] = False
    values["directory"] = directory
    return values if ok[0] else None


def resolve_run_user(raw, euid, report):
    """(user name, uid, gid, groups, home, shell) of the run user, with uid
    and gid None when nothing changes (the supervisor's own user); or None
    after reporting.  Only root may name somebody else (setuid would
    fail)."""
    user_name, uid, gid, home, shell = current_user(euid)
    change_user, ok = False, True
    if raw["user"].strip():
        try:
            entry = lookup_user(raw["user"].strip())
            user_name, uid, gid = entry.pw_name, entry.pw_uid, entry.pw_gid
            home, shell = entry.pw_dir, entry.pw_shell or "/bin/sh"
            if euid != 0 and uid != euid:
                report("user", "only a root supervisor can run services as "
                       "another user (%s); remove the key or start "
                       "fcgiwatch as root" % user_name)
                ok = False
            change_user = euid == 0
        except ValueError as exc:
            report("user", str(exc))
            ok = False
    if raw["group"].strip():
        try:
            gid = lookup_group(raw["group"].strip())
            if euid != 0 and gid != os.getegid():
                report("group", "only a root supervisor can switch to group "
                       "%s; remove the key or start fcgiwatch as root"
                       % raw["group"].strip())
                ok = False
            change_user = change_user or euid == 0
        except ValueError as exc:
            report("group", str(exc))
            ok = False
    if not ok:
        return None
    if not change_user:
        return user_name, None, None, (), home, shell
    try:
        groups = tuple(sorted(set(os.getgrouplist(user_name, gid))))
    except OSError:
        groups = (gid,)
    return user_name, uid, gid, groups, home, shell


def resolve_socket_owner(raw, euid, report):
    """socket_owner as (uid, gid), None when not given, or False after
    reporting."""
    if not raw["socket_owner"].strip():
        return None
    owner, _colon, group = raw["socket_owner"].strip().partition(":")
    try:
        entry = lookup_user(owner)
        result = (entry.pw_uid, lookup_group(group) if group
                  else entry.pw_gid)
        if euid != 0 and result[0] != euid:
            raise ValueError("only a root supervisor can give a socket to "
                             "another user")
    except ValueError as exc:
        report("socket_owner", str(exc))
        return False
    return result


def diff_configs(old, new):
    """Compare two tuples of ServiceConfig for reload.

    Returns (added, removed, changed, updated, unchanged) as lists of names:
    changed services differ in a key that shapes the process (restart),
    updated ones only in how they are supervised (no restart).
    """
    old_by_name = dict((s.name, s) for s in old)
    new_by_name = dict((s.name, s) for s in new)
    added = [n for n in new_by_name if n not in old_by_name]
    removed = [n for n in old_by_name if n not in new_by_name]
    changed, updated, unchanged = [], [], []
    for name in new_by_name:
        if name not in old_by_name:
            continue
        a, b = old_by_name[name], new_by_name[name]
        if a == b:
            unchanged.append(name)
        elif any(getattr(a, k) != getattr(b, k) for k in PROCESS_KEYS):
            changed.append(name)
        else:
            updated.append(name)
    return added, removed, changed, updated, unchanged


def config_to_json(config):
    """A ServiceConfig as JSON-able values (for --reexec's hand-over)."""
    return list(config)


def config_from_json(values):
    """Inverse of config_to_json: JSON lists back into tuples.

    >>> c = parse_config("[a]\\ncommand = sleep 1\\n", "/x.conf").services[0]
    >>> import json
    >>> config_from_json(json.loads(json.dumps(config_to_json(c)))) == c
    True
    """
    def tuples(value):
        if isinstance(value, list):
            return tuple(tuples(item) for item in value)
        return value
    fields = dict(LATER_FIELDS)
    fields.update(zip(ServiceConfig._fields, values))
    if fields["program"] is None:
        fields["program"] = fields["name"]
    for key in ("argv", "groups", "environment", "env", "exitcodes",
                "socket_owner", "limits", "depends_on"):
        fields[key] = tuples(fields[key])
    if fields["healthcheck"] is not None:
        fields["healthcheck"] = Endpoint(*tuples(fields["healthcheck"]))
    if fields["socket"] is not None:
        endpoints = fields["socket"]
        if isinstance(endpoints[0], str):  # 1.0 carried one endpoint
            endpoints = [endpoints]
        fields["socket"] = tuple(Endpoint(*tuples(e)) for e in endpoints)
    return ServiceConfig(**fields)


# ===========================================================================
# Child process
#
# Everything that needs a lookup (argv, environment, uid, gids) was resolved
# into the ServiceConfig by parse_config().  Between fork and exec the child
# only makes system calls, in the order the contract gives, and reports the
# first failure through a close-on-exec pipe so that the supervisor can say
# "exec failed: No such file or directory" instead of "exited 127".
# ===========================================================================

#: Signals the supervisor handles; blocked around fork so that none of its
#: handlers can run in a child before the child has reset them.
HANDLED_SIGNALS = (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT,
                   signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)


#: What spawn_child needs of a program that is not a service (the --check
#: run before --reexec).
Helper = namedtuple("Helper", ["argv", "env", "directory", "umask", "uid",
                               "gid", "groups"])


def non_default_signals():
    """Signals whose disposition is not SIG_DFL here: the child resets them.

    Python itself ignores SIGPIPE and SIGXFSZ, and whoever started us may
    have ignored more (nohup ignores HUP); an ignored signal stays ignored
    across exec, so a child that inherited it would never see it.  The one
    exception is glibc's internal pair (32, 33): its sigaction() refuses
    them, so Python can neither see nor reset them, and glibc programs set
    their own handlers there.
    """
    found = []
    for number in range(1, signal.NSIG):
        if number in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:
            if signal.getsignal(number) not in (signal.SIG_DFL, None):
                found.append(number)
        except (ValueError, OSError):
            continue
    return tuple(found)


#: posix_spawn with setsid (Python 3.8+): starts a child without fork's
#: copy of our page tables, where no change of user is needed.
HAVE_SPAWN_SETSID = sys.version_info >= (3, 8) and hasattr(os, "posix_spawn")


def spawn_child(config, stdin_fd, stdout_fd, stderr_fd, reset_signals,
                home_fd=None, identity=(), file_env=(), listen_fds=()):
    """Start one run of a service.  identity: (name, value) pairs added to
    its environment where the config sets no such name (service_identity).
    listen_fds: sockets the run gets as fds 3, 4 ..., with LISTEN_PID set
    to its own pid (systemd's protocol).

    Returns (pid, error_pipe_read_end).  With a fork, the read end gives
    EOF when exec succeeded, or a record "step:errno:path" when a step
    failed; reading it never blocks for long, because the child either
    execs or exits at once.  Without a fork (posix_spawn) failures are
    known at once: SpawnError, and the read end is -1.  Raises OSError when
    fork itself fails.
    """
    argv = list(config.argv)
    env = dict(identity)
    env.update(config.env)
    if file_env:
        # environment_file comes before environment: the config's own say.
        env.update(file_env)
        env.update(config.environment)
    programs = program_candidates(argv[0], env.get("PATH", DEFAULT_PATH))
    # posix_spawn cannot set rlimits or change user in the child, nor know
    # the pid that LISTEN_PID must be before the exec: then fork, and set
    # it in the child.  The fork costs: make bench measures a root service
    # with socket_pass = systemd restarting in about twice the time of a
    # plain one (3.5 ms against 1.8), as the fork copies our page tables and
    # the child runs Python before exec.  A shell's prologue, sh -c
    # 'LISTEN_PID=$$ exec "$0" "$@"', would keep posix_spawn for about
    # 0.5 ms more, but puts /bin/sh's rules (argv[0], PATH, its exit codes
    # for a missing program) between the config and the exec; and an app
    # server that runs as its own user (the usual case) forks anyway.
    limits = getattr(config, "limits", ())  # a Helper has none
    if config.uid is None and HAVE_SPAWN_SETSID and home_fd is not None \
            and not limits and not listen_fds:
        return spawn_without_fork(config, programs, argv, env, (
            stdin_fd, stdout_fd, stderr_fd), reset_signals, home_fd), -1
    err_read, err_write = os.pipe()  # both close-on-exec (PEP 446)
    limits = child_limits(limits)
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
    try:
        pid = os.fork()
        if pid == 0:
            child_exec(config, programs, argv, env, stdin_fd, stdout_fd,
                       stderr_fd, err_write, reset_signals,
                       limits, listen_fds)  # never returns
    except BaseException:
        os.close(err_read)
        raise
    finally:
        # Only the parent gets here: child_exec() ends in os._exit().
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        os.close(err_write)
    return pid, err_read


def spawn_without_fork(config, programs, argv, env, stdio, reset_signals,
                       home_fd):
    """posix_spawn (vfork-based): what the fork path's child does, but the
    working directory and umask are set in the supervisor around the call,
    as the child inherits them (we have one thread, so nobody else sees
    them change).  Raises SpawnError naming the step that failed."""
    old_umask = os.umask(config.umask)
    try:
        try:
            os.chdir(config.directory)
        except OSError as exc:
            raise SpawnError("chdir", exc.errno, config.directory)
        actions = [(os.POSIX_SPAWN_DUP2, fd, target)
                   for target, fd in enumerate(stdio)]
        # Each failed attempt costs a clone: try the paths that exist (in
        # PATH's order, looked at one by one: the first that exists is most
        # often it), and only where none does, all (for exec's error).
        errors = []
        for pass_ in ("existing", "all"):
            for program in programs:
                if pass_ == "existing" and not os.path.exists(program):
                    continue
                try:
                    return os.posix_spawn(
                        program, argv, env, file_actions=actions,
                        setsid=True, setsigmask=(), setsigdef=reset_signals)
                except OSError as exc:
                    errors.append(exc)
            if errors:
                break
        # As execvp: the first error that is not "not here", else the last.
        chosen = [e for e in errors if e.errno not in (errno.ENOENT,
                                                       errno.ENOTDIR)]
        raise SpawnError("exec", (chosen or errors)[0 if chosen else -1]
                         .errno, argv[0])
    finally:
        os.umask(old_umask)
        os.fchdir(home_fd)


def program_candidates(name, path):
    """The paths execvp would try for name, in order.

    Computed in the parent: os.execvpe() in the child would import modules
    (3.13 imports warnings there), which fails once the child has dropped
    to a user who cannot read our Python's directory.

    >>> program_candidates("sleep", "/usr/bin:/bin")
    ['/usr/bin/sleep', '/bin/sleep']
    >>> program_candidates("./app", "/bin")
    ['./app']
    """
    if "/" in name:
        return [name]
    return [os.path.join(d or ".", name) for d in path.split(os.pathsep)]


def child_limits(limits):
    """(resource number, soft, hard) for setrlimit in the child, worked
    out in the parent (no import after fork): a limit sets both, and
    unlimited is RLIM_INFINITY."""
    if not limits:
        return ()
    import resource
    out = []
    for name, value in limits:
        number = getattr(resource, LIMIT_NAMES[name][0], None)
        if number is None:
            continue
        value = resource.RLIM_INFINITY if value < 0 else value
        out.append((number, value, value, resource.setrlimit))
    return tuple(out)


def child_exec(config, programs, argv, env, stdin_fd, stdout_fd, stderr_fd,
               err_write, reset_signals, limits=(), listen_fds=()):
    """The child between fork and exec.  System calls only; never returns.

    A Python exception escaping from here would leave a second supervisor
    running, so the whole body sits in try/finally ending in os._exit().
    """
    step, path = "setup", ""
    try:
        # The wake-up pipe belongs to the parent: detach from it before any
        # signal can be unblocked, then reset dispositions and the mask.
        signal.set_wakeup_fd(-1)
        for number in reset_signals:
            signal.signal(number, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, ())
        step = "setsid"
        os.setsid()
        step = "stdio"
        os.dup2(stdin_fd, 0)
        os.dup2(stdout_fd, 1)
        os.dup2(stderr_fd, 2)
        if listen_fds:
            # Onto 3, 4 ...: first out of their way (a socket may be one
            # of those numbers), close-on-exec, then down, inheritable
            # (PEP 446 made every fd of ours close-on-exec: without the
            # dup2 the sockets would vanish at exec, as circus#787 saw).
            step = "listen fds"
            above = 3 + len(listen_fds)
            moved = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, above)
                     for fd in listen_fds]
            for number, fd in enumerate(moved):
                os.dup2(fd, 3 + number)
            env["LISTEN_PID"] = "%d" % os.getpid()
        # No other fd reaches the program: everything the supervisor opens
        # is close-on-exec, and inherited fds were marked so at start-up.
        step, path = "chdir", config.directory
        os.chdir(config.directory)
        os.umask(config.umask)
        # Before the user changes: only root may raise a hard limit.
        step, path = "limits", ""
        for number, soft, hard, setrlimit in limits:
            setrlimit(number, (soft, hard))
        if config.uid is not None:
            step, path = "setgroups", ""
            os.setgroups(list(config.groups))
            step = "setgid"
            os.setgid(config.gid)
            step = "setuid"
            os.setuid(config.uid)
            # Never exec as root when the config names somebody else.
            step = "drop privileges"
            if (os.getuid(), os.geteuid()) != (config.uid, config.uid) or (
                    os.getgid(), os.getegid()) != (config.gid, config.gid):
                raise OSError(errno.EPERM, "credentials did not change")
            if config.uid != 0:
                try:
                    os.setuid(0)
                except OSError:
                    pass
                else:
                    raise OSError(errno.EPERM, "could regain root")
        step, path = "exec", argv[0]
        # As execvp(3): try each directory of PATH; report the first error
        # that is not "not here" (EACCES beats ENOENT), else the last.
        first = None
        for program in programs:
            try:
                os.execve(program, argv, env)
            except OSError as exc:
                if first is None and exc.errno not in (errno.ENOENT,
                                                       errno.ENOTDIR):
                    first = exc
                last = exc
        raise first or last
    except OSError as exc:
        record = "%s:%d:%s" % (step, exc.errno or 0, path)
        try:
            os.write(err_write, record.encode("utf-8", "replace")[:4000])
        except OSError:
            pass
    except BaseException as exc:
        try:
            os.write(err_write, ("%s:0:%s (%s)" % (
                step, path, type(exc).__name__)).encode(
                    "utf-8", "replace")[:4000])
        except BaseException:
            pass
    finally:
        os._exit(127)


def launch_run(service, now):
    """Start a process of a service (Service.spawn, a replacement): its
    Run, registered as our child, or the reason it could not be started
    (a string): the environment file, a socket that cannot be bound, a
    failed fork or posix_spawn."""
    supervisor, config = service.supervisor, service.config
    if service.spawns:
        service.restarts += 1
    service.spawns += 1
    identity = service_identity(service.name, supervisor.settings.state_dir)
    if config.numprocs > 1:
        identity += (("FCGIWATCH_PROCESS_NUM", "%d" % config.process_num),)
    try:
        service.listen()
        listen_fds = ()
        if config.socket_pass == "systemd":
            # systemd's socket activation: fds 3, 4 ..., a name for each
            # (Twisted refuses them without), and LISTEN_PID, which must
            # be the run's own pid: set in the child (child_exec).
            listen_fds = tuple(sock.fileno() for sock in service.listeners)
            identity += (("LISTEN_FDS", "%d" % len(listen_fds)),
                         ("LISTEN_FDNAMES", ":".join(
                             [config.program] * len(listen_fds))))
        if config.ready == "notify":
            identity += (("NOTIFY_SOCKET",
                          supervisor.notify_socket(service)),)
            if config.watchdog_secs:
                identity += (("WATCHDOG_USEC", "%d" % (
                    config.watchdog_secs * 1000000)),)
        file_env = ()
        if config.environment_file:
            # Read at every start: a rotated secret takes a restart.
            file_env = read_environment_file(
                config.environment_file, None if config.uid is None
                else (config.uid, config.gid, config.groups),
                supervisor.euid)
        step = "making its output pipes"
        stdin_fd, stdout_fd, stderr_fd = run_fds(service)
        step = "fork"
        pid, exec_fd = spawn_child(config, stdin_fd, stdout_fd, stderr_fd,
                                   supervisor.reset_signals,
                                   supervisor.home_fd, identity,
                                   file_env, listen_fds)
    except (Failure, ValueError) as exc:
        return str(exc)
    except SpawnError as exc:
        return str(exc)
    except OSError as exc:
        # Fork failed (no memory, too many processes), or a pipe could not
        # be made (no file descriptor left): warn and retry after a
        # backoff, as supervise.c does; never give up the loop.
        return "%s failed: %s" % (step, os_error_words(exc))
    # Its own start time, not the loop turn's: in a burst of thousands of
    # starts, the last one is judged from its own spawn.
    run = Run(service, pid, supervisor.clock(), exec_fd)
    run.number = service.spawns
    supervisor.children[pid] = run
    if exec_fd >= 0:
        os.set_blocking(exec_fd, False)
        supervisor.watch(exec_fd, EVENT_READ,
                         lambda _mask: service.on_exec_report(run))
    return run


def run_fds(service):
    """stdin, stdout, stderr for the next run (pipes made on first use)."""
    supervisor, config = service.supervisor, service.config
    if service.outputs is None:
        service.outputs = supervisor.outputs.make(service)
    stdout_pipe, stderr_pipe = service.outputs
    stdout_fd = stream_fd(config.stdout_logfile, stdout_pipe, 1,
                          supervisor.devnull)
    if stderr_follows_stdout(config):
        stderr_fd = stdout_fd
    else:
        stderr_fd = stream_fd(config.stderr_logfile, stderr_pipe, 2,
                              supervisor.devnull)
    stdin_fd = supervisor.devnull
    if service.listeners and config.socket_pass == "stdin":
        stdin_fd = service.listeners[0].fileno()
    return stdin_fd, stdout_fd, stderr_fd


def describe_spawn_error(record):
    """Turn the child's "step:errno:path" record into words.

    >>> describe_spawn_error(b"exec:2:sleepx")
    'exec failed: No such file or directory (sleepx)'
    """
    text = record.decode("utf-8", "replace")
    step, _sep, rest = text.partition(":")
    number, _sep, path = rest.partition(":")
    return str(SpawnError(step, int(number) if number.isdigit() else 0,
                          path))


def decode_wait_status(status):
    """(code, signal name, words) for a wait status.

    >>> decode_wait_status(256)
    (1, None, 'exited 1')
    >>> decode_wait_status(9)
    (None, 'KILL', 'killed by signal KILL')
    """
    if os.WIFSIGNALED(status):
        name = signal_name(os.WTERMSIG(status))
        core = " (core dumped)" if os.WCOREDUMP(status) else ""
        return None, name, "killed by signal %s%s" % (name, core)
    if os.WIFEXITED(status):
        code = os.WEXITSTATUS(status)
        return code, None, "exited %d" % code
    return None, None, "wait status %d" % status


# ===========================================================================
# Safe paths
#
# A root supervisor writes files that other users can reach: a service's
# log file in a directory its user owns, a unix socket in a directory
# anyone may write.  Whoever can change a directory on the way can plant a
# link there and turn our next write, rename or chown into one on a file of
# theirs choosing (the classic log-file symlink attack).  So every file we
# write, create, rename or chown is reached by walk_path(): one directory at
# a time from /, each opened with O_NOFOLLOW, each judged by who besides
# root and us can change it.  A link is followed only where only root or we
# could have made it.  The operations then act through the directory's fd
# (openat, renameat, unlinkat), never through the path again.
#
# Why not simply drop to the directory owner's privileges: a log file that
# fcgiwatch 1.0 created as root in www-data's directory would stop opening,
# and these checks already leave that user nothing to redirect us to.  The
# one place we do switch is bind() of a unix socket in another user's
# directory, because a socket's owner can only be set right from the first
# moment by creating it as that user.
# ===========================================================================

class UnsafePath(Exception):
    """A path fcgiwatch will not write through; the text says why."""


#: Symbolic links followed in one walk (the kernel's own limit).
MAX_LINKS = 40

#: How a directory is opened during a walk.
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0)

#: Where a walk ended: fd is the open directory that holds name (name is
#: None when the walk was for a directory: fd is that directory); owner is
#: None when only root and we can change what the path names, else the uid
#: of the one other user who can; where is the directory's path.
SafePlace = namedtuple("SafePlace", ["fd", "name", "owner", "where"])


def primary_gid(uid):
    import pwd
    try:
        return pwd.getpwuid(uid).pw_gid
    except KeyError:
        return None


def user_label(uid):
    import pwd
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return "uid %d" % uid


def group_label(gid):
    import grp
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return "gid %d" % gid


def directory_owner(path, info, euid, last, strict=False):
    """Who besides root and us can change the entries of this directory:
    None, or one uid.  Raises UnsafePath when more than one user can.

    A sticky directory (/tmp) on the way is fine: others may add entries
    but not replace ours, and the next step judges the entry we use.  The
    directory that holds a file may be sticky too (last False: /tmp/x.log,
    as supervisord's files write it): whatever someone else put under the
    name is refused when it is opened (O_NOFOLLOW, the owner and link
    count checked, a fresh file made with O_EXCL), and what we made there
    nobody else may rename or remove.  A directory we keep files in (last
    True: state_dir, data_dir) may not be shared, sticky or not.

    strict (a config a root supervisor reads): nobody but root and us may
    change it at all, as sshd's StrictModes; sticky directories are fine
    even last, since we only read a file that must itself be root's.
    """
    mode, owner = info.st_mode, info.st_uid
    if strict:
        if owner not in (0, euid):
            raise UnsafePath(CONFIG_OWNER % (path, user_label(owner), path))
        if mode & 0o022 and not mode & stat.S_ISVTX:
            raise UnsafePath(CONFIG_WRITABLE % (path, "others" if mode & 0o002
                                                else "its group", path))
        return None
    shared = last or not mode & stat.S_ISVTX
    if shared and mode & stat.S_IWOTH:
        raise UnsafePath("%s is writable by everyone (mode %04o)" % (
            path, stat.S_IMODE(mode)))
    if shared and mode & stat.S_IWGRP and info.st_gid not in (
            0, os.getegid()) and not (owner not in (0, euid) and
                                      info.st_gid == primary_gid(owner)):
        raise UnsafePath("%s is writable by group %s as well as by %s" % (
            path, group_label(info.st_gid), user_label(owner)))
    return None if owner in (0, euid) else owner


def path_parts(path):
    """The components of an absolute path, '..' resolved by its text."""
    return [p for p in os.path.normpath(path).split("/") if p]


def walk_path(path, euid, create=False, directory=False, strict=False,
              sticky=None):
    """Open the way to path without following a link someone else made.

    Returns a SafePlace whose fd the caller closes.  With directory, path
    itself is a directory (created with create, mode 0755, where only root
    or we can change its parent).  strict: see directory_owner.  sticky:
    may the last directory be a sticky one such as /tmp (by default, when
    path is a file)?  Raises UnsafePath, or OSError such as
    FileNotFoundError for a directory that is missing.
    """
    if sticky is None:
        sticky = not directory
    parts = path_parts(os.path.join("/", path))
    name = None if directory else (parts.pop() if parts else None)
    if name is None and not directory:
        raise UnsafePath("%s names no file" % path)
    links = 0
    fd = os.open("/", DIR_FLAGS)
    try:
        while True:
            where, owner = "/", directory_owner(
                "/", os.fstat(fd), euid, not parts and not sticky, strict)
            restart = None
            for index, part in enumerate(parts):
                last = index == len(parts) - 1
                child = os.path.join(where, part)
                try:
                    info = os.stat(part, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    if not create:
                        raise FileNotFoundError(errno.ENOENT, os.strerror(
                            errno.ENOENT), child)
                    if owner is not None:
                        raise UnsafePath("%s may not be created: %s can "
                                         "change %s" % (child, user_label(
                                             owner), where))
                    os.mkdir(part, 0o755, dir_fd=fd)
                    info = os.stat(part, dir_fd=fd, follow_symlinks=False)
                if stat.S_ISLNK(info.st_mode):
                    restart = follow_link(fd, part, info, where, owner, euid)
                    restart += parts[index + 1:]
                    break
                if not stat.S_ISDIR(info.st_mode):
                    raise UnsafePath("%s is not a directory" % child)
                try:
                    new = os.open(part, DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise UnsafePath("%s changed while fcgiwatch looked "
                                         "at it" % child)
                    raise
                os.close(fd)
                fd, where = new, child
                here = directory_owner(where, os.fstat(fd), euid,
                                       last and not sticky, strict)
                if here is not None and owner not in (None, here):
                    raise UnsafePath("both %s and %s can change %s" % (
                        user_label(owner), user_label(here), where))
                owner = here if here is not None else owner
            if restart is None and name is not None:
                # The file itself may be a link we made: follow that too.
                try:
                    info = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    info = None
                if info is not None and stat.S_ISLNK(info.st_mode):
                    restart = follow_link(fd, name, info, where, owner, euid)
                    name = restart.pop() if restart else None
                    if name is None:
                        raise UnsafePath("%s is a link to /" % os.path.join(
                            where, name or ""))
            if restart is None:
                return SafePlace(fd, name, owner, where)
            links += 1
            if links > MAX_LINKS:
                raise UnsafePath("%s: too many symbolic links" % path)
            os.close(fd)
            fd = os.open("/", DIR_FLAGS)
            parts = restart
    except BaseException:
        os.close(fd)
        raise


def follow_link(fd, name, info, where, owner, euid):
    """The parts of a link's target, if only root or we could have made
    the link; UnsafePath otherwise."""
    path = os.path.join(where, name)
    if owner is not None or info.st_uid not in (0, euid):
        raise UnsafePath("%s is a symbolic link that %s could have made; "
                         "fcgiwatch follows only links that only root could "
                         "make" % (path, user_label(
                             owner if owner is not None else info.st_uid)))
    return path_parts(os.path.join(where, os.readlink(name, dir_fd=fd)))


def check_opened_file(fd, path, place, euid):
    """The file we opened is a plain file of ours (or of the one user who
    controls its directory) with no other name: not a FIFO or device that
    someone planted, not a hard link to a file elsewhere."""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise UnsafePath("%s is not a regular file" % path)
    if info.st_nlink != 1:
        raise UnsafePath("%s has %d hard links; a file fcgiwatch writes must "
                         "have one" % (path, info.st_nlink))
    if info.st_uid not in (0, euid, place.owner):
        raise UnsafePath("%s belongs to %s" % (path, user_label(info.st_uid)))
    return info


def open_for_append(path, euid, mode=0o640):
    """A log file, opened for appending (created if need be) through a
    safe walk, O_NOFOLLOW and O_NONBLOCK (a planted FIFO must not block us),
    then checked with check_opened_file.  Returns the fd."""
    place = walk_path(path, euid)
    try:
        try:
            fd = os.open(place.name, os.O_WRONLY | os.O_APPEND | os.O_CREAT
                         | os.O_NOFOLLOW | os.O_NONBLOCK
                         | getattr(os, "O_CLOEXEC", 0), mode,
                         dir_fd=place.fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UnsafePath("%s became a symbolic link" % path)
            if exc.errno == errno.ENXIO:
                raise UnsafePath("%s is not a regular file" % path)
            raise
        try:
            check_opened_file(fd, path, place, euid)
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        return fd
    finally:
        os.close(place.fd)


def rotate_file(path, backups, euid, compressed=False):
    """FILE -> FILE.1 -> ... FILE.N, by renames inside the directory's fd:
    a rename never follows a link, so whatever was planted under one of
    these names is moved or replaced, and nothing outside is touched.
    compressed: the backups may be FILE.N.gz too (or still uncompressed,
    where a compression did not finish): both move, and the oldest of
    either goes."""
    place = walk_path(path, euid)
    try:
        name, fd = place.name, place.fd
        if backups <= 0:
            os.unlink(name, dir_fd=fd)
            return
        suffixes = ("", ".gz") if compressed else ("",)
        if compressed:
            for suffix in suffixes:
                try:
                    os.unlink("%s.%d%s" % (name, backups, suffix), dir_fd=fd)
                except FileNotFoundError:
                    pass
        for number in range(backups - 1, 0, -1):
            for suffix in suffixes:
                try:
                    os.rename("%s.%d%s" % (name, number, suffix),
                              "%s.%d%s" % (name, number + 1, suffix),
                              src_dir_fd=fd, dst_dir_fd=fd)
                except FileNotFoundError:
                    pass
        os.rename(name, name + ".1", src_dir_fd=fd, dst_dir_fd=fd)
    finally:
        os.close(place.fd)


def file_began(path, info, euid):
    """When a log file found with lines in it (info: its fstat) began, for
    maxage: when its last backup was last written (it began then), else,
    never rotated, its own last write (the best that can be known)."""
    try:
        place = walk_path(path, euid)
    except (OSError, UnsafePath):
        return info.st_mtime
    try:
        for suffix in (".1", ".1.gz"):
            try:
                backup = os.stat(place.name + suffix, dir_fd=place.fd,
                                 follow_symlinks=False)
            except OSError:
                continue
            return min(backup.st_mtime, info.st_mtime)
        return info.st_mtime
    finally:
        os.close(place.fd)


def replace_file(path, data, mode, euid):
    """Replace a file with data, whole or not at all: a fresh temporary
    file beside it (O_EXCL: never one someone planted), every byte written
    and checked, fsync, then rename over the old one.  Raises OSError or
    UnsafePath and leaves the old file as it was."""
    place = walk_path(path, euid)
    temporary = place.name + ".tmp"
    try:
        try:
            os.unlink(temporary, dir_fd=place.fd)
        except FileNotFoundError:
            pass
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                     | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), mode,
                     dir_fd=place.fd)
        try:
            try:
                os.fchmod(fd, mode)  # whatever the umask
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    if written <= 0:
                        raise OSError(errno.EIO, "short write", path)
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(temporary, place.name, src_dir_fd=place.fd,
                      dst_dir_fd=place.fd)
        except BaseException:
            try:
                os.unlink(temporary, dir_fd=place.fd)
            except OSError:
                pass
            raise
    finally:
        os.close(place.fd)


def inspect_file_path(path, euid):
    """How a file at path could be written, only looking (for the config
    check): (owner, problem, entry).  owner: the one user besides root and
    us who can change the directory that holds it, or None; problem: why
    no file there could be written safely (the directories on the way),
    or None; entry: why what is under the name now cannot be (a link,
    hard link, FIFO or foreign file someone put there), or None."""
    try:
        holder = walk_path(os.path.dirname(path), euid, directory=True,
                           sticky=True)
    except UnsafePath as exc:
        return None, str(exc), None
    except OSError as exc:
        return None, "%s: %s" % (exc.filename or path, exc.strerror), None
    try:
        owner = holder.owner
        try:
            info = os.stat(os.path.basename(path), dir_fd=holder.fd,
                           follow_symlinks=False)
        except FileNotFoundError:
            return owner, None, None
        root_link = stat.S_ISLNK(info.st_mode) and owner is None and \
            info.st_uid in (0, euid)
    finally:
        os.close(holder.fd)
    try:
        place = walk_path(path, euid)
    except UnsafePath as exc:
        # A link root made is root's choice: where it leads is an error.
        return (owner, str(exc), None) if root_link else (owner, None,
                                                          str(exc))
    except OSError as exc:
        return owner, "%s: %s" % (exc.filename or path, exc.strerror), None
    try:
        try:
            info = os.stat(place.name, dir_fd=place.fd, follow_symlinks=False)
        except FileNotFoundError:
            return place.owner, None, None
        full = os.path.join(place.where, place.name)
        if not stat.S_ISREG(info.st_mode):
            return place.owner, None, "%s is not a regular file" % full
        if info.st_nlink != 1:
            return place.owner, None, "%s has %d hard links" % (
                full, info.st_nlink)
        if info.st_uid not in (0, euid, place.owner):
            return place.owner, None, "%s belongs to %s" % (
                full, user_label(info.st_uid))
        return place.owner, None, None
    finally:
        os.close(place.fd)


def file_problem(path, euid):
    """Why fcgiwatch could not write a file at path safely now, or None."""
    _owner, problem, entry = inspect_file_path(path, euid)
    return problem or entry


def with_identity(identity, function, *args):
    """Run function as (uid, gid, groups) for its file-system checks, and
    come back to root.  Single-threaded, so nothing else runs meanwhile."""
    if identity is None:
        return function(*args)
    uid, gid, groups = identity
    saved_gid, saved_groups = os.getegid(), os.getgroups()
    os.setgroups(list(groups))
    os.setegid(gid)
    os.seteuid(uid)
    try:
        return function(*args)
    finally:
        os.seteuid(0)
        os.setegid(saved_gid)
        os.setgroups(saved_groups)


def identity_of(uid, gid):
    """(uid, gid, supplementary groups) for with_identity."""
    import pwd
    try:
        groups = os.getgrouplist(pwd.getpwuid(uid).pw_name, gid)
    except (KeyError, OSError):
        groups = [gid]
    return uid, gid, tuple(sorted(set(groups)))


# ===========================================================================
# Output: log files and syslog
#
# Children write into pipes that the supervisor keeps for the whole life of
# a service, across restarts: what a dying child wrote is still in the pipe
# when it is reaped, and is written out before its exit is logged.  The
# supervisor reads in its one loop; a destination that cannot keep up
# (a full syslog socket) pauses reading, so the pipe throttles the child
# instead of the supervisor's memory growing.
# ===========================================================================

MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep",
          "Oct", "Nov", "Dec")


def syslog_packet(priority, tag, pid, body, now=None):
    """One RFC 3164 datagram, as glibc's syslog() writes it.

    >>> syslog_packet(30, "webapp", 7, b"hi", 0)[:4]
    b'<30>'
    """
    stamp = time.localtime(now)
    header = "<%d>%s %2d %02d:%02d:%02d %s[%d]: " % (
        priority, MONTHS[stamp.tm_mon - 1], stamp.tm_mday, stamp.tm_hour,
        stamp.tm_min, stamp.tm_sec, tag, pid)
    return header.encode("utf-8", "replace") + body


def split_lines(buffered, data, limit=SYSLOG_LINE_MAX):
    """Split buffered + data into whole lines (each at most limit bytes) and
    the partial rest.

    >>> split_lines(b"a", b"b\\ncd\\nef", 4)
    ([b'ab', b'cd'], b'ef')
    >>> split_lines(b"", b"123456789", 4)
    ([b'1234', b'5678'], b'9')
    """
    text = buffered + data
    lines = text.split(b"\n")
    rest = lines.pop()
    out = []
    for line in lines:
        line = line.rstrip(b"\r")
        while len(line) > limit:
            out.append(line[:limit])
            line = line[limit:]
        out.append(line)
    while len(rest) > limit:
        out.append(rest[:limit])
        rest = rest[limit:]
    return out, rest


class SyslogSender:
    """Datagrams to /dev/log or udp://; never blocks, never crashes.

    A missing socket is one warning; we try again at most once a minute.
    A full socket keeps messages in a bounded backlog and asks the loop to
    tell us when it can take more; what the bound drops is counted and told
    once the backlog has drained.
    """

    RETRY = 60.0

    def __init__(self, target, facility, on_warning):
        self.target, self.facility = target, facility
        self.on_warning = on_warning
        self.sock = None
        self.next_try = 0.0
        self.warned = False
        self.problem = None       # why it cannot connect, while it cannot
        self.backlog = deque(maxlen=SYSLOG_BACKLOG_MAX)  # oldest dropped
        self.dropped = 0
        self.on_backlog = None  # set by the supervisor: register for write
        self.waiters = []      # output pipes paused while the backlog drains

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def connect(self):
        now = time.monotonic()
        if self.sock is not None or now < self.next_try:
            return self.sock is not None
        kind, family, address = self.target
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.setblocking(False)
        try:
            sock.connect(address)
        except OSError as exc:
            sock.close()
            self.next_try = now + self.RETRY
            self.problem = "syslog %s: %s" % (
                address if kind == "unix" else "udp://%s:%d" % address[:2],
                exc.strerror or exc)
            if not self.warned:
                self.warned = True
                self.on_warning("%s; logging without syslog, and services' "
                                "output to files in state_dir's logs/ "
                                "meanwhile (see --status)" % self.problem)
            return False
        self.sock = sock
        if self.problem:
            self.on_warning("%s works again" % self.problem.split(":")[0])
        self.problem = None
        self.warned = False
        return True

    def send(self, severity, tag, pid, body, facility=None):
        """Queue or send one message; False when it had to be backlogged."""
        if facility is None:
            facility = self.facility
        packet = syslog_packet(facility * 8 + severity, tag, pid, body)
        if self.backlog:
            self.queue(packet)
            return False
        if not self.connect():
            return True  # nowhere to send: the warning was given
        try:
            self.sock.send(packet)
        except (BlockingIOError, InterruptedError):
            self.queue(packet)
            return False
        except OSError:
            # The daemon went away (restarted rsyslog): reconnect next time.
            self.close()
            self.next_try = 0.0
            if self.connect():
                try:
                    self.sock.send(packet)
                except OSError:
                    pass
        return True

    def queue(self, packet):
        if len(self.backlog) == self.backlog.maxlen:
            self.dropped += 1
        self.backlog.append(packet)
        if self.on_backlog is not None:
            self.on_backlog(True)

    def flush(self):
        """Send what the backlog holds; True when it is empty."""
        while self.backlog and self.sock is not None:
            try:
                self.sock.send(self.backlog[0])
            except (BlockingIOError, InterruptedError):
                return False
            except OSError:
                self.close()
                break
            self.backlog.popleft()
        if self.sock is None:
            self.dropped += len(self.backlog)
            self.backlog.clear()
        if not self.backlog and self.dropped:
            # Told now that the socket takes messages again; our own events
            # among the lost are in log_file and on stderr as well.
            dropped, self.dropped = self.dropped, 0
            self.on_warning("syslog: %d message%s lost: syslog did not keep "
                            "up (%d were waiting), or went away" % (
                                dropped, "s were" if dropped != 1 else " was",
                                SYSLOG_BACKLOG_MAX))
        if not self.backlog and self.on_backlog is not None:
            self.on_backlog(False)
        return not self.backlog

    def is_backlogged(self):
        return bool(self.backlog)


class SyslogOutput:
    """Child output to syslog: each line one datagram tagged with the
    service's name.  The destination interface, shared with LogFile:
    chunk (bytes to read per wake-up), deliver(pipe, data), finish(pipe)
    (a dead child's partial last line), is_blocked(), describe()."""

    #: Each line is a datagram anyway, and when the socket fills, what was
    #: read waits in memory: small reads keep that small.
    chunk = SYSLOG_CHUNK

    def __init__(self, supervisor):
        self.supervisor = supervisor

    def describe(self):
        return "syslog"

    def is_blocked(self):
        sender = self.supervisor.syslog
        return sender is not None and sender.is_backlogged()

    def deliver(self, pipe, data):
        sender = self.supervisor.syslog
        if sender is not None and not sender.connect():
            # No syslog (no /dev/log on many small boxes and containers):
            # a file the user can find, which --status names.
            fallback = self.supervisor.outputs.fallback(pipe.service)
            fallback.deliver(pipe, pipe.partial + data)
            pipe.partial = b""
            return
        lines, pipe.partial = split_lines(pipe.partial, data)
        self.send(pipe, lines)

    def finish(self, pipe):
        if pipe.partial:
            lines, pipe.partial = [pipe.partial], b""
            self.send(pipe, lines)

    def send(self, pipe, lines):
        sender = self.supervisor.syslog
        if sender is None:
            return
        service = pipe.service
        severity = LOG_ERR if pipe.stream == "stderr" else LOG_INFO
        pid = service.pid or self.supervisor.pid
        for line in lines:
            sender.send(severity, service.name, pid, line)


class LogFile:
    """An append-only file rotated by size: FILE -> FILE.1 -> ... FILE.N.

    Shared by every stream that names the same path; opened, rotated and
    reopened through the safe-path functions.  When the file cannot be
    opened safely (a link planted in its directory) or written (a full
    disk), the output goes to the fallback destination, syslog, with one
    warning, rather than being lost; a reopen (USR1, reload) tries the
    file again.
    """

    chunk = PIPE_CHUNK

    def __init__(self, path, maxbytes, backups, on_warning, euid,
                 fallback=None, maxage=None, compressions=None):
        self.path, self.maxbytes, self.backups = path, maxbytes, backups
        self.maxage = maxage          # rotate once its first line is older
        self.compressions = compressions  # gzip the rotated ones: where
        self.on_warning = on_warning
        self.euid = euid
        self.fallback = fallback
        self.fd = -1
        self.size = 0
        self.began = None  # when its first line was written (maxage)
        self.line_end = True  # the file ends with a whole line
        self.problem = None  # why it cannot be opened: output to fallback
        self.write_failing = False
        self.users = 0

    def describe(self):
        if self.problem and self.fallback is not None:
            return self.fallback.describe()
        return self.path

    def is_blocked(self):
        return bool(self.problem) and self.fallback is not None and \
            self.fallback.is_blocked()

    def open(self):
        if self.fd >= 0:
            return True
        try:
            self.fd = open_for_append(self.path, self.euid)
            info = os.fstat(self.fd)
            self.size = info.st_size
            self.line_end = True  # a new file, or taken as it is
            self.began = None
            if self.size and self.maxage:
                self.began = file_began(self.path, info, self.euid)
        except UnsafePath as exc:
            self.fail("cannot be opened safely: %s" % exc)
            return False
        except OSError as exc:
            self.fail("cannot be opened: %s" % exc.strerror)
            return False
        if self.problem:
            self.on_warning("log file %s: writing to it again" % self.path)
        self.problem = None
        return True

    def fail(self, why):
        first = self.problem is None
        self.problem = why  # first: the warning may come back to write()
        if first:
            where = "its output goes to syslog until it can be written " \
                "(kill -USR1 reopens it)" if self.fallback else \
                "lines are dropped until it can be written"
            self.on_warning("log file %s %s; %s" % (self.path, why, where))

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def reopen(self):
        """For logrotate: it renamed the file, now we start a fresh one."""
        self.close()
        self.open()

    def deliver(self, pipe, data):
        if pipe.timestamps():
            data = pipe.stamp(data)
        rest = self.write(data)
        if rest and self.fallback is not None:
            self.fallback.deliver(pipe, rest)

    def finish(self, pipe):
        if self.fallback is not None:
            self.fallback.finish(pipe)

    def write(self, data):
        """Append data; returns what could not be written (b"" when all).

        The file is rotated at a line end only, as multilog does, so that a
        reader of lines never sees one torn in two: the line that would
        pass maxbytes goes to the next file (a line longer than maxbytes on
        its own is the one that passes it), and a line still being written
        when the file is full is finished first."""
        if self.fd < 0 and (self.problem or not self.open()):
            return data
        if self.maxage:
            now = time.time()
            if not self.size:
                self.began = now
            elif self.line_end and now - (self.began or now) >= self.maxage:
                self.rotate()  # by age: no timer, at the first write after
                if self.fd < 0:
                    return data
                self.began = now
        view, at, end = memoryview(data), 0, len(data)
        while at < end:
            stop, full = self.chunk_end(data, at)
            if full and self.line_end:
                self.rotate()
                if self.fd < 0:
                    return data[at:]
                continue
            try:
                written = os.write(self.fd, view[at:stop])
            except OSError as exc:
                # A full disk may have room again at the next write: try
                # every time, warn once.
                if not self.write_failing:
                    self.write_failing = True
                    self.on_warning("log file %s cannot be written: %s; %s"
                                    % (self.path, exc.strerror,
                                       "the output goes to syslog meanwhile"
                                       if self.fallback else
                                       "lines are dropped meanwhile"))
                return data[at:]
            if self.write_failing:
                self.write_failing = False
                self.on_warning("log file %s: writing to it again"
                                % self.path)
            if written:
                self.line_end = data[at + written - 1] == 10  # b"\n"
            self.size += written
            at += written
        return b""

    def chunk_end(self, data, at):
        """(where the next write ends, whether the file must be rotated
        first, at a line end).  All that is left, where it fits; else the
        whole lines that fit; else, in the middle of a line (or for a line
        longer than maxbytes in an empty file), the rest of that line."""
        end = len(data)
        if not self.maxbytes:
            return end, False
        room = self.maxbytes - self.size
        if room <= 0:
            return self.line_to_end(data, at), True
        if end - at <= room:
            return end, False
        if self.line_end:
            cut = data.rfind(b"\n", at, at + room)
            if cut >= 0:
                return cut + 1, False
            if self.size:
                return at, True  # the next line would pass maxbytes
        return self.line_to_end(data, at), False

    @staticmethod
    def line_to_end(data, at):
        found = data.find(b"\n", at)
        return found + 1 if found >= 0 else len(data)

    def rotate(self):
        self.close()
        try:
            rotate_file(self.path, self.backups, self.euid,
                        self.compressions is not None)
        except UnsafePath as exc:
            self.fail("cannot be rotated safely: %s" % exc)
            return
        except OSError as exc:
            self.on_warning("log file %s cannot be rotated: %s" % (
                self.path, exc.strerror))
        else:
            if self.compressions is not None:
                self.compressions.rotated(self)
        self.open()


class Compression:
    """A rotated file being gzipped by a child: number says where its
    source is now (FILE.number), moved along by each rotation meanwhile;
    identity is the source's (st_dev, st_ino)."""

    def __init__(self, log_file, number, identity, temporary):
        self.log_file, self.number = log_file, number
        self.identity, self.temporary = identity, temporary
        self.pid = 0


class Compressions:
    """gzip of rotated log files (stdout_logfile_compress), each in a
    child process, never in the loop: compressing a large file takes
    seconds, which is why supervisord refused it inside its loop.

    The loop opens the source and a fresh temporary file beside it (the
    safe-path rules: no link followed, nothing planted reused), forks, and
    when the child is done renames the temporary file to FILE.N.gz and
    removes FILE.N.  The child only reads one fd and writes the other.  A
    child that fails or is killed leaves FILE.N as it was (its temporary
    file is removed), and the next rotation compresses it again; one file
    is never compressed twice at once."""

    def __init__(self, supervisor):
        self.supervisor = supervisor
        self.jobs = []
        self.made = 0             # temporary files made: their names

    def rotated(self, log_file):
        """log_file was rotated: what its jobs compress moved one up; then
        compress every backup not compressed yet."""
        for job in self.jobs:
            if job.log_file is log_file:
                job.number += 1
        try:
            place = walk_path(log_file.path, self.supervisor.euid)
        except (OSError, UnsafePath):
            return  # the rotation said why
        try:
            self.clear_leftovers(log_file, place)
            busy = set(job.number for job in self.jobs
                       if job.log_file is log_file)
            for number in range(1, log_file.backups + 1):
                if number not in busy:
                    self.start(log_file, place, number)
        finally:
            os.close(place.fd)

    def clear_leftovers(self, log_file, place):
        """Temporary files of compressions that are over (a supervisor
        that died or re-executed meanwhile)."""
        ours = set(job.temporary for job in self.jobs)
        prefix = ".%s.gz-" % place.name
        try:
            names = os.listdir(place.fd)
        except OSError:
            return
        for name in names:
            if name.startswith(prefix) and name not in ours:
                try:
                    os.unlink(name, dir_fd=place.fd)
                except OSError:
                    pass

    def start(self, log_file, place, number):
        source = "%s.%d" % (place.name, number)
        path = os.path.join(place.where, source)
        try:
            src = os.open(source, os.O_RDONLY | os.O_NOFOLLOW |
                          os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0),
                          dir_fd=place.fd)
        except FileNotFoundError:
            return
        except OSError as exc:
            log_file.on_warning("log file %s not compressed: %s" % (
                path, os_error_words(exc)))
            return
        out = -1
        try:
            info = check_opened_file(src, path, place, self.supervisor.euid)
            self.made += 1
            temporary = ".%s.gz-%d-%d" % (place.name, os.getpid(), self.made)
            out = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL |
                          os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0),
                          0o600, dir_fd=place.fd)
            os.fchmod(out, stat.S_IMODE(info.st_mode))  # the source's
            job = Compression(log_file, number, (info.st_dev, info.st_ino),
                              temporary)
            job.pid = fork_gzip(src, out)
        except (OSError, UnsafePath) as exc:
            log_file.on_warning("log file %s not compressed: %s" % (
                path, exc if isinstance(exc, UnsafePath)
                else os_error_words(exc)))
            return
        finally:
            os.close(src)
            if out >= 0:
                os.close(out)
        self.jobs.append(job)
        self.supervisor.helpers[job.pid] = lambda status: self.ended(job,
                                                                    status)

    def ended(self, job, status):
        """The child is done: FILE.N.gz in place of FILE.N, or, had it
        failed, FILE.N left for the next rotation."""
        self.jobs.remove(job)
        log_file = job.log_file
        try:
            place = walk_path(log_file.path, self.supervisor.euid)
        except (OSError, UnsafePath):
            return
        try:
            source = "%s.%d" % (place.name, job.number)
            try:
                info = os.stat(source, dir_fd=place.fd,
                               follow_symlinks=False)
                same = (info.st_dev, info.st_ino) == job.identity
            except OSError:
                same = False  # rotated away meanwhile
            if same and os.WIFEXITED(status) and \
                    os.WEXITSTATUS(status) == 0:
                os.rename(job.temporary, source + ".gz",
                          src_dir_fd=place.fd, dst_dir_fd=place.fd)
                os.unlink(source, dir_fd=place.fd)
                return
            os.unlink(job.temporary, dir_fd=place.fd)
            if same:
                log_file.on_warning("log file %s was not compressed (%s); "
                                    "the next rotation tries again" % (
                                        os.path.join(place.where, source),
                                        decode_wait_status(status)[2]))
        except OSError as exc:
            log_file.on_warning("log file %s: compression not finished: %s"
                                % (log_file.path, os_error_words(exc)))
        finally:
            os.close(place.fd)

    def stop(self):
        """At shutdown: the children go, their temporary files too; the
        files they compressed are left for the next rotation."""
        for job in list(self.jobs):
            try:
                os.kill(job.pid, signal.SIGKILL)
                _pid, status = os.waitpid(job.pid, 0)
            except OSError:
                status = 1
            self.supervisor.helpers.pop(job.pid, None)
            self.ended(job, status or 1)


def fork_gzip(src, out):
    """A child that gzips fd src into fd out, at a lower priority, and
    exits 0 when every byte is written and synced; its pid."""
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
    try:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                signal.set_wakeup_fd(-1)  # the supervisor's, not ours
                for number in HANDLED_SIGNALS:
                    signal.signal(number, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_SETMASK, ())
                os.nice(10)
                gzip_fd(src, out)
                code = 0
            finally:
                os._exit(code)
        return pid
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


def gzip_fd(src, out):
    """Copy fd src to fd out as gzip (zlib's gzip wrapping: no gzip module
    needed), then fsync out."""
    import zlib
    packer = zlib.compressobj(6, zlib.DEFLATED, 31)
    while True:
        data = os.read(src, 1 << 20)
        if not data:
            break
        write_all(out, packer.compress(data))
    write_all(out, packer.flush())
    os.fsync(out)


def write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


_STAMP = [None, b""]


def time_stamp():
    """b"2026-12-02T17:10:26.123+00:00 ": now in UTC, ISO 8601 with
    milliseconds (the seconds part formatted once a second)."""
    now = time.time()
    second = int(now)
    if _STAMP[0] != second:
        _STAMP[0] = second
        _STAMP[1] = time.strftime("%Y-%m-%dT%H:%M:%S",
                                  time.gmtime(second)).encode("ascii")
    return b"%s.%03d+00:00 " % (_STAMP[1], int((now - second) * 1000))


class NullOutput:
    """stdout_logfile = null: nothing is kept but the recent lines (every
    pipe keeps those), so --tail answers for it too."""

    chunk = PIPE_CHUNK

    @staticmethod
    def describe():
        return "null"

    @staticmethod
    def is_blocked():
        return False

    def deliver(self, pipe, data):
        pass

    def finish(self, pipe):
        pass


class Recent:
    """The last RECENT_BYTES of what a service wrote, in whole lines, both
    streams in the order read: chunks of (number, lines, stream), numbered
    across services so that --tail of a pool interleaves its instances as
    they wrote."""

    __slots__ = ("chunks", "size", "totals")

    def __init__(self):
        self.chunks = deque()
        self.size = 0
        self.totals = {}          # stream -> bytes ever kept: log offsets

    def add(self, number, data, stream="stdout"):
        self.totals[stream] = self.totals.get(stream, 0) + len(data)
        if len(data) > RECENT_BYTES:
            start = data.find(b"\n", len(data) - RECENT_BYTES - 1) + 1
            data = data[start:] if 0 < start < len(data) else \
                data[-RECENT_BYTES:]
        self.chunks.append((number, data, stream))
        self.size += len(data)
        while self.size - len(self.chunks[0][1]) >= RECENT_BYTES:
            self.size -= len(self.chunks.popleft()[1])

    def lines(self):
        """[(number, line)] of what is kept, oldest first."""
        found = []
        for number, data, _stream in self.chunks:
            found.extend((number, line) for line in data.split(b"\n")[:-1])
        return found

    def data(self, stream):
        """What one stream's pipe carried, as bytes (a pipe that carries
        both, redirect_stderr, is "stdout")."""
        return b"".join(data for _number, data, which in self.chunks
                        if which == stream)


class OutputPipe:
    """One pipe from a service's stdout (and maybe stderr) to a destination
    (a LogFile, the SyslogOutput or the NullOutput).  The supervisor keeps both ends: the
    write end is handed to every run of the child, so the pipe outlives any
    one run and nothing a child wrote is lost when it dies.
    """

    def __init__(self, service, stream, dest, fds=None):
        self.service, self.stream, self.dest = service, stream, dest
        if fds is not None:  # handed over by --reexec
            self.read_fd, self.write_fd = fds
        else:
            self.read_fd, self.write_fd = os.pipe()
            try:
                fcntl.fcntl(self.read_fd, F_SETPIPE_SZ, PIPE_CHUNK)
            except OSError:
                pass  # the per-user budget is spent: Outputs says so
        try:
            self.size = fcntl.fcntl(self.read_fd, F_GETPIPE_SZ)
        except OSError:
            self.size = PIPE_CHUNK
        os.set_blocking(self.read_fd, False)
        self.partial = b""
        self.line_start = True    # the next byte begins a line
        self.unkept = b""         # a line begun, not yet in service.recent

    def timestamps(self):
        config = self.service.config
        return config.stderr_logfile_timestamps if self.stream == "stderr" \
            else config.stdout_logfile_timestamps

    def stamp(self, data):
        """data with each line that begins in it prefixed by the time it was
        read (one time a chunk: a replace, not a loop over lines)."""
        mark = time_stamp()
        stamped = data.replace(b"\n", b"\n" + mark)
        if self.line_start:
            stamped = mark + stamped
        self.line_start = data.endswith(b"\n")
        if self.line_start:
            stamped = stamped[:-len(mark)]  # the next line's, not yet here
        return stamped

    def close(self):
        for fd in (self.read_fd, self.write_fd):
            if fd >= 0:
                os.close(fd)
        self.read_fd = self.write_fd = -1

    def read_once(self):
        """Move one chunk to the destination; 0 when the pipe is empty."""
        try:
            data = os.read(self.read_fd, self.dest.chunk)
        except (BlockingIOError, InterruptedError):
            return 0
        if data:
            self.keep(data)
            self.dest.deliver(self, data)
        return len(data)

    def keep(self, data):
        """The whole lines of data into the service's recent output (a
        begun line waits for its end), and to whoever follows it."""
        cut = data.rfind(b"\n") + 1
        if not cut:
            if len(self.unkept) < RECENT_BYTES:
                self.unkept += data
            return
        whole = data if cut == len(data) else data[:cut]
        if self.unkept:
            whole, self.unkept = self.unkept + whole, b""
        if cut < len(data):
            self.unkept = data[cut:]
        self.service.keep_output(whole, self.stream)

    def drain(self, limit=16 << 20):
        """Everything the pipe holds now (a dead child wrote its last)."""
        moved, chunk = 0, 1
        while chunk and moved < limit:
            chunk = self.read_once()
            moved += chunk
        if self.unkept:
            self.service.keep_output(self.unkept + b"\n", self.stream)
            self.unkept = b""
        self.dest.finish(self)


# ===========================================================================
# Output routing
#
# Children write into pipes that live as long as their service; the loop
# moves what they hold to each pipe's destination (a LogFile, shared by
# every stream that names its path, or the one SyslogOutput).  A
# destination that cannot keep up (a full syslog socket) pauses reading,
# so the pipe throttles the child instead of our memory growing.
# ===========================================================================

def pipe_pages_needed(pipes):
    """Pipe pages a user needs for this many output pipes of PIPE_CHUNK,
    with room for the supervisor's own (the wake-up pipe, exec reports)."""
    return (pipes + 16) * (PIPE_CHUNK // 4096)


def pipe_budget_problem(pipes, euid):
    """Why the kernel would give a non-root supervisor smaller output pipes
    than it asks for, or None."""
    if euid == 0:
        return None
    try:
        with open(PIPE_PAGES_SOFT) as handle:
            soft = int(handle.read())
    except (OSError, ValueError):
        return None
    needed = pipe_pages_needed(pipes)
    if not soft or needed <= soft:
        return None
    return ("%d output pipes need %d pipe pages, and the kernel gives a user "
            "other than root %d (%s): past that, pipes hold a page or two, "
            "and a burst of output blocks a service sooner; raise it (sysctl "
            "-w fs.pipe-user-pages-soft=%d) or run fcgiwatch as root" % (
                pipes, needed, soft, PIPE_PAGES_SOFT, needed))


def fallback_path(settings, name):
    """Where a service's syslog-bound output goes while syslog cannot be
    reached."""
    return os.path.join(settings.state_dir, AUTO_LOG_DIR, "%s.log" % name)


class Outputs:
    """The supervisor's output pipes and their destinations."""

    def __init__(self, supervisor):
        self.supervisor = supervisor
        self.files = {}           # path -> LogFile
        self.fallbacks = {}       # service name -> LogFile, without syslog
        self.small_pipes = False  # said that the kernel gave smaller pipes
        self.pipe_fds = 0         # fds the output pipes hold
        self.fd_budget = None     # their share (Supervisor.raise_limits)
        self.syslog = SyslogOutput(supervisor)
        self.null = NullOutput()
        self.number = 0           # chunks of output kept, numbered
        self.compressions = Compressions(supervisor)

    def make(self, service, handed=None):
        """The pipes for a service's stdout and stderr, per its config
        (handed: {stream: (read fd, write fd)} from --reexec)."""
        config = service.config
        handed = handed or {}
        stdout = self.make_pipe(service, "stdout", handed.get("stdout"))
        stderr = None  # None: the child's fd 2 shares stdout's
        if not stderr_follows_stdout(config):
            try:
                stderr = self.make_pipe(service, "stderr",
                                        handed.get("stderr"))
            except OSError:
                if stdout is not None:
                    self.release(stdout)
                raise
        return stdout, stderr

    def make_pipe(self, service, stream, fds=None):
        """A pipe for one stream, to where the config sends it (None for
        inherit); fds: the ends --reexec handed over."""
        def key(name):
            return getattr(service.config, "%s_logfile%s" % (stream, name))
        dest = key("")
        if dest == "inherit":
            return None
        if fds is None and self.fd_budget is not None and \
                self.pipe_fds + 2 > self.fd_budget:
            # The services' pipes may take all but FDS_OWN: the status
            # file, the control socket and the logs need some too.
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        log_file = None
        if dest == "syslog":
            dest = self.syslog
        elif dest == "null":
            dest = self.null
        else:
            log_file = self.files.get(dest) or LogFile(
                dest, key("_maxbytes"), key("_backups"),
                self.on_log_file_warning, self.supervisor.euid, self.syslog,
                key("_maxage"), self.compressions if key("_compress")
                else None)
            dest = log_file
        pipe = OutputPipe(service, stream, dest, fds)  # may raise: no fd
        self.pipe_fds += 2
        if log_file is not None:
            if log_file.path not in self.files:
                log_file.open()
                self.files[log_file.path] = log_file
            log_file.users += 1
        if pipe.size < PIPE_CHUNK and not self.small_pipes:
            self.small_pipes = True
            self.supervisor.warn(
                "%s's output pipe holds %d KB, not %d KB: the kernel's "
                "budget of pipe pages for user %s (%s) is spent, so a burst "
                "of output blocks the service sooner; raise it, e.g. sysctl "
                "-w fs.pipe-user-pages-soft=%d, or run fcgiwatch as root" % (
                    service.name, pipe.size >> 10, PIPE_CHUNK >> 10,
                    user_label(self.supervisor.euid), PIPE_PAGES_SOFT,
                    pipe_pages_needed(len(self.supervisor.services) * 2)))
        self.supervisor.watch(pipe.read_fd, EVENT_READ,
                              lambda _mask: self.on_readable(pipe))
        return pipe

    def fallback(self, service):
        """The file a service's syslog-bound output goes to while syslog
        cannot be reached: state_dir/logs/NAME.log, a megabyte and one
        backup at most."""
        log_file = self.fallbacks.get(service.name)
        if log_file is None:
            path = fallback_path(self.supervisor.settings, service.name)
            try:
                os.mkdir(os.path.dirname(path), 0o755)
            except OSError:
                pass  # there already (or the file's open says why)
            log_file = self.fallbacks[service.name] = LogFile(
                path, 1 << 20, 1, self.on_log_file_warning,
                self.supervisor.euid)
            log_file.open()
            self.supervisor.status_dirty = True
        return log_file

    def on_log_file_warning(self, message):
        # Where output goes changed (to syslog, or back): --status says so.
        self.supervisor.status_dirty = True
        self.supervisor.warn(message)

    def release(self, pipe):
        self.supervisor.unwatch(pipe.read_fd)
        pipe.close()
        self.pipe_fds -= 2
        fallback = self.fallbacks.pop(pipe.service.name, None)
        if fallback is not None:
            fallback.close()
        if isinstance(pipe.dest, LogFile):
            pipe.dest.users -= 1
            if pipe.dest.users <= 0:
                pipe.dest.close()
                self.files.pop(pipe.dest.path, None)

    def on_readable(self, pipe):
        if pipe.dest.is_blocked():
            # The syslog socket is full: stop reading, let the pipe fill and
            # the child wait, until the backlog drains.
            self.supervisor.unwatch(pipe.read_fd)
            self.supervisor.syslog.waiters.append(pipe)
            return
        pipe.read_once()

    def on_syslog_backlog(self, backlogged):
        supervisor = self.supervisor
        sender = supervisor.syslog
        if backlogged:
            if sender.sock is not None:
                supervisor.watch(sender.sock.fileno(), EVENT_WRITE,
                                 lambda _mask: sender.flush())
            return
        if sender.sock is not None:
            supervisor.unwatch(sender.sock.fileno())
        self.resume_waiters()

    def resume_waiters(self, only_unblocked=False):
        """Read again the pipes paused on syslog's backlog (only_unblocked:
        those whose destination takes output again: a log file that was
        on syslog after a failed reopen and is a file again)."""
        sender = self.supervisor.syslog
        waiters, sender.waiters = sender.waiters, []
        for pipe in waiters:
            if only_unblocked and pipe.dest.is_blocked():
                sender.waiters.append(pipe)
            elif pipe.read_fd >= 0:
                self.supervisor.watch(
                    pipe.read_fd, EVENT_READ,
                    lambda _mask, pipe=pipe: self.on_readable(pipe))

    def reopen(self):
        """SIGUSR1: logrotate renamed our files; open fresh ones."""
        for log_file in self.files.values():
            log_file.reopen()
        self.resume_waiters(only_unblocked=True)


# ===========================================================================
# Held listening sockets
#
# With socket =, the supervisor binds and listens once and hands the
# socket to every run, so that it never closes while the program
# restarts: clients wait in the backlog instead of being refused.  A pool's
# instances share one.  A unix socket is made safely in a directory
# another user may own (see Safe paths).
# ===========================================================================

def socket_key(config):
    """What identifies a service's held sockets: reused across reloads when
    equal (how they are passed is not part of it)."""
    if config is None or config.socket is None:
        return None
    return (tuple(e.url for e in config.socket), config.socket_owner,
            config.socket_mode, config.uid)


def open_listeners(config, euid):
    """Bind and listen once on each of a service's sockets: the list, in
    the config's order; raises Failure with none left open."""
    opened = []
    try:
        for endpoint in config.socket:
            opened.append(open_listener(config, endpoint, euid))
    except Failure:
        for sock in opened:
            sock.close()
        raise
    return opened


def open_listener(config, endpoint, euid):
    """Bind and listen once on one of a service's sockets; raises Failure.

    A unix socket file left by a dead program is replaced; one that still
    answers belongs to a live program and is never taken over.
    """
    where = "[%s] socket %s" % (config.section, endpoint.url)
    sock = socket.socket(endpoint.family, socket.SOCK_STREAM)
    try:
        if endpoint.family == socket.AF_UNIX:
            owner = config.socket_owner or (
                config.uid if config.uid is not None else euid,
                config.gid if config.gid is not None else os.getegid())
            bind_unix(sock, endpoint.address, config.socket_mode, owner,
                      euid, where)
        else:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(endpoint.address)
        sock.listen(socket.SOMAXCONN)
    except Failure:
        sock.close()
        raise
    except UnsafePath as exc:
        sock.close()
        raise Failure("%s: not created: %s; put the socket in a directory "
                      "that only root (or its owner) can change, such as "
                      "/run/NAME" % (where, exc))
    except OSError as exc:
        sock.close()
        raise Failure("%s: cannot listen: %s" % (where, exc.strerror or exc))
    # The socket stays blocking: its open file is shared with the child,
    # which expects accept() to wait.
    return sock


def bind_unix(sock, path, mode, owner, euid, where):
    """Create a unix socket with its mode and owner right from the first
    moment, and change nothing through its path afterwards.

    bind() takes a path, so it runs from inside the directory's safely
    opened fd (fchdir, a relative name); the umask gives the mode.  In a
    directory only root (or we) can change, root binds and sets the owner
    with a chown that does not follow links, as nobody could have swapped
    the file meanwhile.  In a directory its owner can change, the socket
    is bound as that owner, so no chown is needed at all; a socket for
    somebody else there is refused, since the directory's owner could swap
    the file before we gave it away.
    """
    place = walk_path(path, euid)
    saved = open_home()
    try:
        os.fchdir(place.fd)
        remove_stale_socket(place, where)
        identity = None
        if place.owner is not None:
            if owner[0] != place.owner:
                raise UnsafePath("%s can change %s, and the socket is to "
                                 "belong to %s" % (user_label(place.owner),
                                                   place.where,
                                                   user_label(owner[0])))
            identity = identity_of(owner[0], owner[1])
        old_umask = os.umask(0o777 & ~mode)
        try:
            with_identity(identity, sock.bind, place.name)
        finally:
            os.umask(old_umask)
        if identity is None and euid == 0 and tuple(owner) != (0, 0):
            os.chown(place.name, owner[0], owner[1], dir_fd=place.fd,
                     follow_symlinks=False)
    finally:
        os.fchdir(saved)
        os.close(saved)
        os.close(place.fd)


def remove_stale_socket(place, where):
    """Unlink the socket file a dead program left, inside place (we are
    in that directory).  Anything else under the name is left alone."""
    path = os.path.join(place.where, place.name)
    try:
        info = os.stat(place.name, dir_fd=place.fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise Failure("%s: %s exists and is not a socket; remove it or "
                      "choose another path" % (where, path))
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(place.name)
    except OSError:
        # Nobody listens: a leftover from a dead program.  unlinkat never
        # follows a link, so only this directory's entry goes.
        os.unlink(place.name, dir_fd=place.fd)
        return
    finally:
        probe.close()
    raise Failure("%s: a running program listens on %s; stop it first"
                  % (where, path))


def remove_socket_file(path, euid):
    """Unlink our unix socket at stop, through a safe walk, and only while
    the name still holds a socket."""
    try:
        place = walk_path(path, euid)
    except (OSError, UnsafePath):
        return
    try:
        info = os.stat(place.name, dir_fd=place.fd, follow_symlinks=False)
        if stat.S_ISSOCK(info.st_mode):
            os.unlink(place.name, dir_fd=place.fd)
    except OSError:
        pass
    finally:
        os.close(place.fd)


# ===========================================================================
# Supervision state machine
#
# One Service per program instance.  Each process it starts is a Run, kept
# apart from the Service (config, want, counters), as runit keeps one
# record per process: a service can then hold a new run beside an old one.
# What the operator wants (want: "up" or "down") is kept apart from what
# the process does (state), as daemontools keeps flagwantup apart from pid.
#
# Two small machines, each with one clock:
#
# - A Run has a phase and one due time (see Run): starting (until it is
#   ready by `ready`, or overdue), ready (the next WATCHDOG=1 due),
#   signalled (KILL due), killed (KILL's grace, a look at its group), gone.
#   Its due time, a process exit and its tree emptying are the run's
#   events: "ready", "not_ready", "watchdog", "exited", "gone".
# - A Service has a state and a few named timers (Service.timers: the end
#   of a backoff, the next probe and its timeout, the next look at its
#   memory, a replacement's retry).  Service.on_due() is the one dispatcher:
#   each due timer, and each due run, becomes an event.
#
# Every event reaches a table.  The serving run's events, the timers and
# the operator's and the probe's words go to Service.fire(event, now, ...),
# which looks (state, event) up in TRANSITIONS; the events of a replacement
# and of runs being retired go to OVERLAP, by the run's role.  A pair that
# is not listed is a deliberate no-op.  change_state() is the one place a
# state changes: it stamps the time, logs the event's line with
# "[old -> new]", marks the status file and arms the timers of the new
# state (arm()).  "Ready" is decided in one place, judge_ready(): the run
# is ready by `ready` (it ran startsecs, or it sent READY=1) and, where
# there is a health check, a probe passed; becoming ready is one event the
# supervisor hears (Supervisor.service_ready).  The whole machine, as the
# tables at the end of this section hold it (a test checks that they
# agree):
#
#   state(s)            event          handler             goes to
#   down fatal backoff  want_up        start_wanted        starting
#   down fatal backoff  restart        start_wanted        starting
#   backoff             backoff        backoff_over        starting
#   backoff fatal       want_down      give_up_retrying    down
#   down                want_down      settle_down         down
#   starting up         ready          run_ready           up, once probed
#   starting up         not_ready      run_not_ready       stopping, backoff
#   starting            probe_ok       first_probe_passed  up, once ready
#   starting up         probe          start_probe         (a probe)
#   starting up         probe_timeout  probe_timed_out     (a failed probe)
#   starting up         probe_failed   restart_unhealthy   as restart
#   starting up         watchdog       watchdog_expired    as restart
#   starting up         memory         check_memory        (as restart)
#   starting up         want_down      stop_running        stopping
#   starting up         restart        restart_running     stopping; overlap
#   up                  replace        retry_replacement   up, overlap
#   starting up         exited         run_ended           starting, backoff
#   stopping            exited         stopping_exited     (down once gone)
#   stopping            gone           stop_finished       down or starting
#   down backoff fatal  exited         exit_out_of_turn    (logged)
#
# A start that fails in the supervisor itself (fork, chdir, exec with
# posix_spawn, a socket that cannot be bound) is decided like a run that
# ended at once: spawn_failed -> backoff or fatal.  A start not made yet
# is STARTING with no run: queued (a burst's slice, start_queued) or
# waiting (depends_on, until Dependencies.on_ready).
#
# Overlapping restarts (see Overlap): with a held socket, a restart starts
# a replacement on the same listening socket while the serving run serves,
# and retires the serving run (stop signal, stopwaitsecs, KILL) only once
# the replacement is ready.  The service stays UP meanwhile.  By role:
#
#   role                event          handler
#   replacement         ready          promote
#   replacement         not_ready      replacement_overdue
#   replacement         exited         replacement_ended
#   retiring            exited         retired_exited
#   retiring            gone           retired_gone
#
# The serving run ending while its replacement starts makes the
# replacement the run (run_ended); a stop, a shutdown or a newer restart
# retires the replacement too.
# ===========================================================================

#: How a stop's cause reads in the log.
STOP_REASONS = {"stopped": "on request", "restart": "for a restart",
                "health": "health check failed", "shutdown": "shutdown",
                "removed": "removed from the config",
                "watchdog": "no WATCHDOG=1 in watchdog_secs",
                "memory": "over max_memory",
                "not ready": "no READY=1 within startsecs"}

#: A Run's phases.
RUN_STARTING, RUN_READY, RUN_SIGNALLED, RUN_KILLED, RUN_GONE = (
    "starting", "ready", "signalled", "killed", "gone")

#: The timers a service may hold in each state; arm() drops the others.
STATE_TIMERS = {
    STARTING: ("probe", "probe_timeout", "memory"),
    UP: ("probe", "probe_timeout", "memory", "replace"),
    BACKOFF: ("backoff",)}

#: The order in which on_due() fires timers due at once.
TIMER_ORDER = ("backoff", "probe_timeout", "probe", "memory", "replace")


def backoff_delay(fails, backoff_max):
    """Seconds to wait after the fails-th quick failure in a row.

    >>> [backoff_delay(n, 10) for n in range(6)]
    [0, 1, 2, 4, 8, 10]
    """
    if fails <= 0:
        return 0
    return min(backoff_max, 2 ** min(fails - 1, 30))


#: What follows a run that ended by itself.  action: "restart" after delay
#: seconds (0: at once), "fatal" (give up), "done" (it ended as expected:
#: stays down, wanted down) or "down" (autorestart = false after an
#: unexpected exit: stays down, still wanted up).
Decision = namedtuple("Decision", ["action", "delay"])


def restart_decision(config, code, quick, fails):
    """What to do after a run ends by itself: a pure function of the config.

    code is the exit code (None for a signal or a failed spawn), quick says
    the run was shorter than startsecs, fails counts quick failures in a row
    including this one.

    >>> c = parse_config("[a]\\ncommand = x\\n", "/x.conf").services[0]
    >>> restart_decision(c, 1, True, 3)
    Decision(action='restart', delay=4)
    """
    expected = code is not None and code in config.exitcodes
    if config.autorestart == "false" or (
            config.autorestart == "unexpected" and expected):
        return Decision("done" if expected else "down", 0)
    if quick and config.startretries is not None and (
            fails > config.startretries):
        return Decision("fatal", 0)
    return Decision("restart", backoff_delay(fails, config.backoff_max)
                    if quick else 0)


class Run:
    """One process of a service, from spawn to reap, with its own small
    machine: a phase and one due time.

      phase      due                             at due (or on its own)
      starting   startsecs passed; with ready =  "ready"; "not_ready" for
                 notify, READY=1 overdue         notify (READY=1: "ready")
      ready      the next WATCHDOG=1, with       "watchdog"
                 watchdog_secs (else none)
      signalled  stopwaitsecs after the stop     KILL, then killed
                 signal (kill_at)
      killed     the end of KILL's grace, or     "gone" once nothing of its
                 the next look at a group we     tree is left, or at the
                 are not told about              grace's end (given up)
      gone       none

    The events go to its service (Service.on_run_event), which hands them
    to TRANSITIONS or OVERLAP by the run's role.  stop(), on_due(),
    check_gone() and kill_leftovers() are the same for the serving run, a
    replacement and a retiring run.

    pid is the main process, 0 once reaped; pgid its process group, which
    may outlive it; start_time its /proc start time (read lazily); members
    are the run's other processes that became our children when their
    parent died (pid -> process group), sessions the sessions its tree is
    known to use (see Tree).
    """

    def __init__(self, service, pid, now, exec_fd=-1):
        self.service = service
        self.pid = self.pgid = pid
        self.start_time = None
        self.started_at, self.started_wall = now, time.time()
        self.exec_fd = exec_fd
        self.spawn_error = None
        self.pidfd = None     # set for a taken-over process: not our child
        self.phase = RUN_STARTING
        self.next_due = None
        self.kill_at = None   # signalled: KILL; killed: the grace's end
        self.lingered = False  # its main process ended before its tree
        self.members = {}
        self.sessions = set((pid,))
        self.session = pid      # the main process's session
        self.adopted = False    # the main process is a daemon we adopted
        self.orphans_seen = 0
        self.exit_words = None  # how the main process ended, once it did
        self.number = 0         # the service's spawn count at its start
        self.said_stopping = False  # STOPPING=1 logged

    @property
    def due(self):
        """When the run's machine is due (see the table above), or None."""
        return self.next_due

    @due.setter
    def due(self, when):
        self.next_due = when
        if when is not None:
            self.service.touch()

    @property
    def ready(self):
        return self.phase == RUN_READY

    @property
    def stopping(self):
        return self.phase in (RUN_SIGNALLED, RUN_KILLED)

    # -- the run's machine -------------------------------------------------

    def start_clock(self, now, config, at_least=0.0):
        """starting: due when startsecs has passed (at least at_least), or,
        with ready = notify, when READY=1 is overdue (no bound with
        startsecs = 0)."""
        self.phase = RUN_STARTING
        if config.ready == "notify":
            self.due = now + config.startsecs if config.startsecs else None
        else:
            self.due = now + max(config.startsecs, at_least)

    def become_ready(self, now, config):
        """starting -> ready: the watchdog runs from now, where there is
        one."""
        self.phase = RUN_READY
        self.due = now + config.watchdog_secs if config.watchdog_secs \
            else None

    def fed_watchdog(self, now, config):
        """WATCHDOG=1 came: the next is due watchdog_secs from now."""
        if self.phase == RUN_READY and config.watchdog_secs:
            self.due = now + config.watchdog_secs

    def stop(self, now, config):
        """-> signalled: the stop signal to the tree (and CONT: a stopped
        process cannot act on TERM until resumed), KILL at stopwaitsecs."""
        number = config.stopsignal
        self.signal(number, config.stopasgroup)
        if number not in (signal.SIGKILL, signal.SIGCONT):
            self.signal(signal.SIGCONT, config.stopasgroup)
        self.phase = RUN_SIGNALLED
        self.kill_at = self.due = now + config.stopwaitsecs

    def on_due(self, now):
        """The due time came: the event it means for the service, or None
        when the run's own machine took it (KILL sent, a poll)."""
        config = self.service.config
        self.due = None
        if self.phase == RUN_STARTING:
            return "not_ready" if config.ready == "notify" else "ready"
        if self.phase == RUN_READY:
            return "watchdog"
        if self.phase == RUN_SIGNALLED and now >= self.kill_at:
            self.phase = RUN_KILLED
            self.signal(signal.SIGKILL, config.killasgroup)
            self.service.log("killed: %s still running %s after the %s "
                             "signal; sent KILL" % (
                                 self.role_words(), format_seconds(
                                     config.stopwaitsecs),
                                 signal_name(config.stopsignal)),
                             LOG_WARNING)
            self.kill_at = now + GROUP_KILL_GRACE
        return self.check_gone(now)

    def check_gone(self, now):
        """signalled or killed: "gone" once nothing of the tree is left (or
        KILL's grace is over); until then the next due time: KILL, the
        SIGCHLD of the main process or of a member, or a look at a group
        whose processes are not ours to be told about."""
        config = self.service.config
        if not self.stopping:
            return None
        if not self.tree_alive(config.stopasgroup or config.killasgroup):
            self.phase, self.due = RUN_GONE, None
            return "gone"
        if self.pid:
            # Its SIGCHLD will come (after KILL's grace, we wait for ever: a
            # process that outlives KILL sits in the kernel).
            self.due = self.kill_at if now < self.kill_at else None
            return None
        self.lingered = True
        if now >= self.kill_at and self.phase == RUN_KILLED:
            self.service.log("%s process tree (process group %d, %d "
                             "background processes) outlived KILL; not "
                             "waiting any longer" % (
                                 self.role_words().replace(" was", "'s")
                                 .replace("it", "its"), self.pgid,
                                 len(self.members)), LOG_WARNING)
            self.phase, self.due = RUN_GONE, None
            return "gone"
        if self.members and self.service.supervisor.tree.subreaper:
            self.due = self.kill_at  # each member's exit wakes us
        else:
            self.due = min(self.kill_at, now + GROUP_POLL)
        return None

    def role_words(self):
        return "the old run was" if self in self.service.retiring \
            else "it was"

    def gone_words(self):
        """How a stop ended, for the log."""
        if self.phase == RUN_GONE and self.pid:
            return "gave up waiting for its process to end"
        words = self.exit_words or "ended"
        return words + ("; the rest of its process tree is gone"
                        if self.lingered else "")

    def kill_leftovers(self):
        """The run is over but processes of its tree live on (workers of a
        dead master, a job it put in the background, one that called
        setsid): kill them, so that no duplicate of the service holds its
        port beside the next run.  Called after the next run is forked,
        off the restart path."""
        if not self.members and not self.group_alive():
            return
        self.signal(signal.SIGKILL, True)
        self.service.log("killed what was left of process group %d%s" % (
            self.pgid, " and %d background processes" % len(self.members)
            if self.members else ""), LOG_WARNING)

    # -- signals and the tree ----------------------------------------------

    def signal(self, number, as_group):
        """Signal this run's process, or its whole tree; never a stranger.

        The pid stays ours until we reap it, and Linux never hands out a
        pid that still names a process group, so neither can be recycled.
        A member is signalled by its group when it leads one (a daemon
        after setsid), else alone: it is our child, so its pid is safe.
        """
        targets = []
        if as_group and self.pgid:
            targets.append((os.killpg, self.pgid))
        elif self.pidfd is not None:
            # Not our child: its pid could be recycled, its pidfd not.
            targets.append((signal.pidfd_send_signal, self.pidfd))
        elif self.pid:
            targets.append((os.kill, self.pid))
        if as_group:
            targets.extend((os.killpg if pgid == pid else os.kill, pid)
                           for pid, pgid in self.members.items())
        for send, target in targets:
            try:
                send(target, number)
            except (ProcessLookupError, PermissionError):
                pass  # already gone: the reaper brings the news

    def group_alive(self):
        return bool(self.pgid) and group_alive(self.pgid)

    def tree_alive(self, as_group):
        """Is anything of this run left: its main process, or (as_group)
        its process group or a member?"""
        return bool(self.pid) or (as_group and bool(
            self.members or self.group_alive()))

    def read_start_time(self):
        if self.pid and self.start_time is None:
            self.start_time = process_start_time(self.pid)
        return self.start_time


class Overlap:
    """The half of Service that restarts on a held socket: a replacement
    (next_run) starts on the same listening socket while the serving run
    serves, and the serving run is retired only once the replacement is
    ready (see the OVERLAP table).  Only ever a part of a Service: the
    fields it uses (next_run, retiring, replace_why, replace_failure) are
    set in Service.__init__."""

    def can_overlap(self):
        """May a restart overlap now?  Only on a held socket (without one
        the new run's port would clash), only from UP, and only where the
        new config (a reload's) keeps the outputs and the socket."""
        run, new = self.run, self.pending_config or self.config
        return bool(self.listeners) and self.state == UP and \
            run is not None and bool(run.pid) and run.pidfd is None and \
            not self.supervisor.shutting_down and all(
                getattr(self.config, key) == getattr(new, key)
                for key in OUTPUT_KEYS) and \
            socket_key(self.config) == socket_key(new)

    def begin_overlap(self, now, why):
        """UP -> UP: start a replacement beside the serving run."""
        if self.next_run is not None:
            # A newer restart: the replacement under way may run old code.
            self.retire(self.next_run, now)
            self.next_run = None
        self.timers.pop("replace", None)
        if self.pending_config is not None:
            self.apply_config(self.pending_config, now)
        run = launch_run(self, now)
        if not isinstance(run, Run):
            self.replacement_failed(now, None, run, why)
            return
        # Never ready at once: the old run would be stopped before the new
        # one could even fail.
        run.start_clock(run.started_at, self.config, MIN_GOOD_RUN)
        self.next_run = run
        self.replace_why = why
        self.supervisor.status_dirty = True
        self.log("restarting (%s), overlapping: pid %d starts on the held "
                 "socket beside pid %d, which serves until it is ready" % (
                     STOP_REASONS.get(why, why), run.pid, self.run.pid))

    def promote(self, now, run, words=None):
        """UP -> UP (STARTING until a probe passes, with a health check):
        the replacement is ready; the old run retires."""
        old = self.run
        self.next_run = None
        run.become_ready(now, self.config)
        self.run = run
        self.fails = 0
        self.message = ""
        # --status counts a run's seconds, as svstat does a pid's.
        self.since, self.since_wall = now, time.time()
        self.retire(old, now)
        words = "restarted: pid %d is ready; pid %d gets %s" % (
            run.pid, old.pid, signal_name(self.config.stopsignal))
        if self.config.healthcheck:
            # The new run answers for itself before it counts as up.
            self.cancel_probe()
            self.health, self.health_fails = "unknown", 0
            self.timers["probe"] = now
            self.change_state(STARTING, "", words)
        else:
            self.judge_ready(now, words)

    def replacement_overdue(self, now, run):
        """The replacement sent no READY=1 within startsecs."""
        self.next_run = None
        self.retire(run, now)
        self.replacement_failed(now, None, "no READY=1 within startsecs "
                                "(%s)" % format_seconds(
                                    self.config.startsecs))

    def replacement_ended(self, now, run, code, what):
        self.replacement_failed(now, run, what)

    def replacement_failed(self, now, run, what, why=None):
        """The replacement ended (or could not start) before it was ready:
        the old run serves on, and another try comes after the backoff, as
        a quick failure would be retried; startretries ends the tries."""
        config = self.config
        why = why or self.replace_why
        if run is not None:
            self.next_run = None
            what = run.spawn_error or what
            if config.killasgroup:
                run.kill_leftovers()
        self.fails += 1
        self.replace_failure = (self.spawns, what)
        if why == "health":
            # The serving run is unhealthy: overlapping bought nothing, so
            # stop it and start afresh, backing off as usual.
            self.log("restart failed: %s; stopping the unhealthy run (pid "
                     "%d) instead" % (what, self.run.pid), LOG_ERR)
            self.want = "up"
            self.begin_stop(now, "health")
            return
        line = "restart failed: %s; the old run (pid %d) keeps serving" % (
            what, self.run.pid)
        self.message = line
        if config.startretries is not None and \
                self.fails > config.startretries:
            self.log("%s; no more tries (startretries = %d): --restart %s "
                     "tries again" % (line, config.startretries, self.name),
                     LOG_ERR)
        else:
            delay = backoff_delay(self.fails, config.backoff_max)
            self.timers["replace"] = now + delay
            self.replace_why = why
            self.log("%s; trying again in %s" % (line, format_seconds(delay)),
                     LOG_ERR)
        self.supervisor.status_dirty = True

    def retry_replacement(self, now):
        if self.can_overlap():
            self.begin_overlap(now, self.replace_why or "restart")

    def retire(self, run, now):
        """Stop a run that is no longer the service's: the stop signal to
        its tree now, KILL at stopwaitsecs."""
        self.supervisor.tree.scan(now)
        run.stop(now, self.config)
        if run not in self.retiring:
            self.retiring.append(run)
        self.supervisor.status_dirty = True

    def retired_exited(self, now, run, code, what):
        self.log("old run ended: %s" % what)
        self.check_run(run, now)

    def retired_gone(self, now, run):
        """A retiring run's tree is gone: forget it.  A stop waiting for it
        is over once the serving run is gone too."""
        if run in self.retiring:
            self.retiring.remove(run)
        self.supervisor.status_dirty = True
        if self.state == STOPPING and self.run is not None and \
                self.run.phase == RUN_GONE:
            self.fire("gone", now, self.run)


class Timers(dict):
    """A service's timers, name -> monotonic due time (STATE_TIMERS); one
    set (or made sooner) touches the service, for the loop's heap."""

    def __init__(self, service):
        dict.__init__(self)
        self.service = service

    def __setitem__(self, name, when):
        dict.__setitem__(self, name, when)
        self.service.touch()

    def setdefault(self, name, when):
        if name not in self:
            self[name] = when
        return self[name]

    def update(self, items):
        for name, when in items:
            self[name] = when


class Service(Overlap):
    """Everything about one supervised program instance (runit's struct
    svdir): its config, what is wanted, its state, counters, output pipes,
    held socket, health, and its runs: the serving one (None when no
    process runs), a replacement starting beside it, runs being retired.

    timers holds the service's own due times by name (STATE_TIMERS); the
    runs hold theirs.  on_due() fires whatever is due; next_wake() is the
    earliest of them all.
    """

    def __init__(self, supervisor, config):
        self.supervisor = supervisor
        self.config = config
        self.name = config.name
        self.state = DOWN
        self.want = "down"
        self.why = "not started"  # short reason shown in (...) when no pid
        self.message = ""         # the last error, for --status
        self.run = None
        self.next_run = None      # a replacement starting beside run
        self.retiring = []        # runs replaced, being stopped
        self.timers = Timers(self)  # name -> monotonic due time
        self.fingerprint_of = (None, None)  # (config, its fingerprint)
        self.replace_why = None   # what the replacement is for
        self.replace_failure = None  # (spawn count, why) of the last
        self.notify_status = ""   # the last STATUS= the run sent
        self.roll_note = None     # (spawn count, why) a roll skipped it
        self.queued_cause = None  # a queued start: the line to log at it
        self.troubled = False     # an alert of trouble went out: recovered
        self.memory_over = 0      # looks in a row over max_memory
        self.pending_backoff = False  # back off once the stop is over
        self.since = supervisor.clock()
        self.since_wall = time.time()
        self.fails = 0            # quick failures in a row
        self.spawns = 0
        self.restarts = 0
        self.ready_number = 0     # spawn count of the last run found ready
        self.last_exit = None
        self.previous_exit = None
        self.outputs = None       # (stdout OutputPipe or None, stderr ...)
        self.pending_config = None
        self.removing = False
        self.health = "unknown" if config.healthcheck else "none"
        self.health_fails = 0
        self.probe = None
        self.listeners = []       # the held sockets, while it has them
        self.recent = None        # Recent: its last lines, for --tail
        self.followers = []       # Follows: --tail -f readers

    @property
    def pid(self):
        return self.run.pid if self.run is not None else 0

    @property
    def waiting(self):
        """Wanted up, and waiting for what it depends on to be ready."""
        return self.state == STARTING and self.run is None and \
            self.why == WAITING

    @property
    def fingerprint(self):
        """config_fingerprint of the config, worked out once a config: the
        status file carries it at every write."""
        if self.fingerprint_of[0] is not self.config:
            self.fingerprint_of = (self.config,
                                   config_fingerprint(self.config))
        return self.fingerprint_of[1]

    def touch(self):
        """Something may be due sooner: the loop looks again."""
        self.supervisor.touched.add(self)

    def runs(self):
        """The service's runs: serving, replacement, retiring."""
        return [run for run in [self.run, self.next_run] + self.retiring
                if run is not None]

    # -- bookkeeping -----------------------------------------------------

    def log(self, words, severity=LOG_INFO):
        self.supervisor.log("%s: %s" % (self.name, words), severity)

    def change_state(self, state, why=None, words=None, severity=LOG_INFO):
        """The one place a state changes: stamp the time, log the event's
        line (words) with the transition, mark the status file, arm the
        timers of the state."""
        old = self.state
        now = self.supervisor.clock()
        if state != old:
            self.state = state
            self.since = now
            self.since_wall = time.time()
            if state not in (STARTING, UP) and self.config.healthcheck:
                # Nothing is probed while nothing runs: neither "ok" any
                # more, nor the last run's failure.
                self.health, self.health_fails = "unknown", 0
                if self.message.startswith("health: "):
                    self.message = ""
            if state == UP and self.troubled:
                self.troubled = False
                self.supervisor.alerts.send(self, "recovered", words or
                                            "up again")
        if why is not None:
            self.why = why
        self.arm(now)
        self.touch()
        self.supervisor.status_dirty = True
        if words is not None:
            self.log("%s [%s -> %s]" % (words, old, state), severity)

    def arm(self, now):
        """The timers the state needs, and none it does not: a running
        service probes where it has a health check and looks at its memory
        where it has max_memory.  Every way into a run ends here (spawn,
        promote, take over, restore after --reexec, a reload), so none can
        miss a timer."""
        keep = STATE_TIMERS.get(self.state, ())
        for name in [n for n in self.timers if n not in keep]:
            del self.timers[name]
        config = self.config
        if "probe" not in keep or not config.healthcheck or self.run is None:
            self.cancel_probe()
            self.timers.pop("probe", None)
        elif self.probe is None:
            self.timers.setdefault("probe", now)
        if "memory" not in keep or not config.max_memory or self.run is None:
            self.timers.pop("memory", None)
        else:
            self.timers.setdefault("memory",
                                   now + config.healthcheck_interval)

    def fire(self, event, now, *args):
        """Hand an event to the handler of (state, event), if there is one."""
        handler = TRANSITIONS.get((self.state, event))
        if handler is not None:
            handler(self, now, *args)

    def on_run_event(self, run, event, now, *args):
        """An event of one of the runs: the serving run's by the service's
        state (TRANSITIONS), the others' by their role (OVERLAP)."""
        if run is self.run:
            self.fire(event, now, run, *args)
            return
        role = "replacement" if run is self.next_run else \
            "retiring" if run in self.retiring else None
        handler = OVERLAP.get((role, event))
        if handler is not None:
            handler(self, now, run, *args)

    def next_wake(self):
        """The earliest monotonic time this service needs the loop, or None."""
        times = list(self.timers.values())
        times.extend(run.due for run in self.runs() if run.due is not None)
        return min(times) if times else None

    def on_due(self, now):
        """The one dispatcher: each run whose due time came, then each
        timer, as an event through the tables."""
        for run in self.runs():
            if run.due is not None and now >= run.due and \
                    run in self.runs():
                event = run.on_due(now)
                if event is not None:
                    self.on_run_event(run, event, now)
        for name in TIMER_ORDER:
            due = self.timers.get(name)
            if due is not None and now >= due:
                del self.timers[name]
                self.fire(name, now)

    def judge_ready(self, now, words):
        """The one rule for "ready": the serving run is ready by `ready`
        (it ran startsecs, or it sent READY=1) and, where there is a health
        check, a probe passed.  Then the service is UP (logged with words),
        and a run newly ready is told to the supervisor once
        (service_ready): what dependencies and waits hang on."""
        run = self.run
        if run is None or not run.ready or self.state not in (
                STARTING, UP) or (self.config.healthcheck and
                                  self.health != "ok"):
            return False
        if self.state != UP or words:
            self.change_state(UP, "", words)
        if run.number != self.ready_number:
            renewed = self.ready_number != 0
            self.ready_number = run.number
            self.supervisor.service_ready(self, renewed)
        return True

    # -- events: from the operator, the reaper, the probe, the run -------

    def on_want_up(self, now):
        """--start, autostart, or a reload that adds the service."""
        self.want = "up"
        self.fire("want_up", now)

    def on_want_down(self, now, why="stopped"):
        """--stop, shutdown, or a reload that removes the service."""
        self.want = "down"
        self.fire("want_down", now, why)

    def on_restart(self, now):
        """--restart: a fresh run, whatever the state."""
        self.want = "up"
        self.fire("restart", now)

    def on_exited(self, run, status, now):
        """The reaper saw a run's process end (status None: a taken-over
        process, not our child, whose exit status nobody can know)."""
        if status is None:
            code, signame, words = None, None, "exited (status unknown)"
        else:
            code, signame, words = decode_wait_status(status)
        self.close_pidfd(run)
        if run.exec_fd >= 0:
            # The child is dead, so its report (if any) is in the pipe.
            self.on_exec_report(run)
        ran = now - run.started_at
        run.pid = 0
        run.exit_words = "%s after %s" % (words, format_seconds(ran))
        self.drain_output()
        if run is self.run or run is self.next_run:
            self.previous_exit = self.last_exit  # back, if one is adopted
            self.last_exit = {"code": code, "signal": signame,
                              "at": time.time(), "ran": round(ran, 3)}
        self.on_run_event(run, "exited", now, code, run.exit_words)

    def on_tree_changed(self, now, run):
        """A member of one of our runs' trees was reaped."""
        if run.stopping:
            self.check_run(run, now)

    def check_run(self, run, now):
        """A run being stopped lost a process: on to "gone" once nothing of
        its tree is left."""
        event = run.check_gone(now)
        if event is not None:
            self.on_run_event(run, event, now)

    def on_exec_report(self, run):
        """The exec pipe is readable: EOF means exec succeeded."""
        try:
            data = os.read(run.exec_fd, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data:
            run.spawn_error = describe_spawn_error(data)
            self.message = run.spawn_error
        self.close_exec_pipe(run)

    def on_probe_result(self, ok, why, now):
        """A probe finished: note it, schedule the next one, and tell the
        machine of a pass or of healthcheck_retries failures."""
        config = self.config
        self.timers.pop("probe_timeout", None)
        if self.state not in (STARTING, UP) or not config.healthcheck or \
                self.run is None:
            return
        interval = config.healthcheck_interval
        # Until it first answers, look again soon, not an interval later.
        self.timers["probe"] = now + (min(interval, 0.5) if (
            self.state == STARTING and not ok) else interval)
        if ok:
            if self.health != "ok" and self.health_fails:
                self.log("health ok again: %s" % config.healthcheck.url)
            self.health, self.health_fails = "ok", 0
            if self.message.startswith("health: "):
                self.message = ""
            self.supervisor.status_dirty = True
            self.fire("probe_ok", now)
            return
        if self.state == STARTING and now - self.run.started_at < \
                config.startsecs:
            return  # still starting up: failures do not count yet
        reason = "%s: %s" % (config.healthcheck.url, why)
        self.health_fails += 1
        self.health = "failing"
        self.message = "health: " + reason
        self.supervisor.status_dirty = True
        retries = config.healthcheck_retries
        if self.health_fails < retries:
            self.log("health failed (%d of %d): %s" % (
                self.health_fails, retries, reason), LOG_WARNING)
            return
        self.fire("probe_failed", now, reason)

    def on_notify(self, run, fields, now):
        """A run of ours spoke on its NOTIFY_SOCKET (sd_notify)."""
        config = self.config
        if "STATUS" in fields and run is self.run:
            # Shown on root's terminal by --status: no escape sequences.
            self.notify_status = printable(fields["STATUS"][:200])
            self.supervisor.status_dirty = True
        if fields.get("STOPPING") == "1" and not run.stopping and \
                not run.said_stopping:
            run.said_stopping = True  # logged once a run, not per message
            self.log("pid %d says it is stopping (STOPPING=1)" % run.pid)
        if fields.get("WATCHDOG") == "1":
            run.fed_watchdog(now, config)
        if fields.get("READY") == "1" and config.ready == "notify" and \
                run.phase == RUN_STARTING:
            self.on_run_event(run, "ready", now, "up: pid %d sent READY=1"
                              % run.pid)

    def send_signal(self, number):
        """--signal: to the main process only, as svc -h does."""
        run = self.run
        if run is None or not run.pid:
            return False
        try:
            if run.pidfd is not None:
                signal.pidfd_send_signal(run.pidfd, number)
            else:
                os.kill(run.pid, number)
        except ProcessLookupError:
            return False  # it is exiting: the reaper will tell
        return True

    # -- the transitions, named in the table -------------------------------

    def start_wanted(self, now, *_why):
        # DOWN/FATAL/BACKOFF -> STARTING: the operator asked, so the count
        # of quick failures starts again.
        self.fails = 0
        self.message = ""
        self.spawn(now)

    def backoff_over(self, now):
        self.spawn(now)  # BACKOFF -> STARTING

    def give_up_retrying(self, now, why):
        # BACKOFF/FATAL -> DOWN: no restart is pending any more.
        self.change_state(DOWN, why, "stopped: no more retries (%s)"
                          % STOP_REASONS.get(why, why))
        self.settle_down()

    def settle_down(self, *_args):
        """DOWN: finish a removal, or take a config that waited for it."""
        if self.removing:
            self.supervisor.forget(self)
        elif self.pending_config is not None:
            self.apply_config(self.pending_config, self.supervisor.clock())

    def run_ready(self, now, run, words=None):
        # STARTING -> UP: the run is ready by `ready` (it ran startsecs, or
        # it sent READY=1): a good start.  With a health check it stays
        # STARTING until a probe passes (judge_ready).
        config = self.config
        run.become_ready(now, config)
        self.fails = 0
        if config.ready == "notify":
            self.message = ""
        self.judge_ready(now, words or "up: ran startsecs (%s)" %
                         format_seconds(config.startsecs))

    def run_not_ready(self, now, run):
        # STARTING -> STOPPING, then BACKOFF as after a quick failure: with
        # ready = notify, startsecs was the time it had to say READY=1.
        self.message = "no READY=1 within startsecs (%s)" % (
            format_seconds(self.config.startsecs))
        self.log("%s from pid %d; stopping it" % (self.message, run.pid),
                 LOG_ERR)
        self.want = "up"
        self.pending_backoff = True
        self.begin_stop(now, "not ready")

    def first_probe_passed(self, now):
        # STARTING -> UP, once the run is ready by `ready` as well.
        self.judge_ready(now, "up: %s answers" % self.config.healthcheck.url)

    def start_probe(self, now):
        probe = Probe(self.supervisor, self, now)
        if probe.sock is not None:
            self.probe = probe
            self.timers["probe_timeout"] = probe.deadline

    def probe_timed_out(self, now):
        if self.probe is not None:
            self.probe.on_timeout(now)

    def check_memory(self, now):
        """max_memory: the run's tree's RSS, every healthcheck_interval; two
        looks in a row over the cap restart it (overlapping where it can)."""
        config, run = self.config, self.run
        if not config.max_memory or run is None or not run.pid:
            return
        self.timers["memory"] = now + config.healthcheck_interval
        rss = tree_rss(run)
        self.memory_over = self.memory_over + 1 if rss > config.max_memory \
            else 0
        if self.memory_over >= 2:
            self.memory_over = 0
            self.restart_troubled(now, "memory", "memory %s, over max_memory "
                                  "(%s) two looks in a row" % (
                                      format_bytes(rss),
                                      format_bytes(config.max_memory)))

    def watchdog_expired(self, now, run):
        self.restart_troubled(now, "watchdog", "no WATCHDOG=1 for %s "
                              "(watchdog_secs)" % format_seconds(
                                  self.config.watchdog_secs))

    def restart_unhealthy(self, now, reason):
        self.restart_troubled(now, "health", reason, "health failed %d times "
                              "in a row, restarting: %s" % (
                                  self.health_fails, reason))

    def restart_troubled(self, now, why, message, line=None):
        """STARTING/UP -> as a restart, for trouble the service did not
        report itself: a failing health check, a silent watchdog, memory
        over max_memory.  Overlapping where it can."""
        if why != "health":
            self.message = message
        self.log(line or "%s; restarting" % message, LOG_ERR)
        self.supervisor.alerts.send(self, "health_failing", message)
        self.want = "up"
        if self.can_overlap():
            self.begin_overlap(now, why)  # UP, a replacement beside
        else:
            self.begin_stop(now, why)  # -> STOPPING -> respawn

    def stop_running(self, now, why):
        if self.run is None:
            # STARTING -> DOWN: its start had not been made yet.
            self.change_state(DOWN, "stopped", "stopped before it started "
                              "(%s)" % STOP_REASONS.get(why, why))
            self.settle_down()
            return
        self.begin_stop(now, why)  # STARTING/UP -> STOPPING

    def restart_running(self, now):
        self.fails = 0
        if self.run is None:
            return  # a start not made yet: that start is the restart
        if self.can_overlap():
            self.begin_overlap(now, "restart")  # UP, a replacement beside
        else:
            self.begin_stop(now, "restart")  # -> STOPPING, respawn when gone

    def run_ended(self, now, run, code, what):
        """STARTING/UP: the run ended by itself: adopt the daemon it left,
        or restart now, back off, give up, or stay down.  What was left of
        its tree goes too."""
        config = self.config
        if self.next_run is not None:
            # The serving run ended while its replacement starts: that is
            # the run now, still starting (its due time says when it is
            # ready, or overdue).
            self.run, self.next_run = self.next_run, None
            self.timers.pop("replace", None)
            self.change_state(STARTING, "", "old run %s while pid %d "
                              "starts; that is the run now" % (
                                  what, self.run.pid), LOG_WARNING)
            if config.killasgroup:
                run.kill_leftovers()
            return
        ran = now - run.started_at
        quick = (not run.ready and ran < config.startsecs) or (
            ran < MIN_GOOD_RUN)
        if code == 0 and quick and not run.spawn_error and \
                not self.supervisor.shutting_down:
            adopted = self.supervisor.tree.adopt(run, now)
            if adopted is not None:
                self.adopt_daemon(now, run, *adopted)
                return
        self.run = None
        if run.spawn_error:
            # The child reported through the exec pipe: it never ran.
            self.after_run(now, "could not start", None, True,
                           run.spawn_error)
        else:
            if run.ready and (code is None or code not in config.exitcodes):
                self.supervisor.alerts.send(self, "crashed", what)
            short = "exited %d" % code if code is not None else \
                "signal %s" % (self.last_exit["signal"] or "unknown")
            self.after_run(now, "exited", code, quick, what, short)
            if code == 0 and quick and config.startsecs > 0:
                self.log("exited 0 after %s, sooner than startsecs (%s): if "
                         "it puts itself in the background, make it run in "
                         "the foreground (e.g. runfcgi daemonize=false)" % (
                             format_seconds(ran), format_seconds(
                                 config.startsecs)), LOG_WARNING)
        if config.killasgroup:
            run.kill_leftovers()

    def adopt_daemon(self, now, run, pid, logged):
        """STARTING/UP -> STARTING, same run: its main process exited 0 at
        once and left pid, a daemon, which is the run from now on; it is
        ready as any run is.  A daemon that double-forks is adopted twice
        (the middle process, then the daemon); only one of those is
        logged."""
        self.last_exit = self.previous_exit  # the launcher's exit is no news
        words = None
        if logged:
            words = "adopted: pid %d, which put itself in the background; " \
                "run it in the foreground (e.g. runfcgi daemonize=false) " \
                "to keep its output" % pid
        run.start_clock(now, self.config)
        self.since, self.since_wall = now, time.time()  # a new pid
        self.change_state(STARTING, "", words, LOG_WARNING)

    def spawn_failed(self, now, error, cause=None):
        """No process came of a start (fork, chdir or exec failed in the
        supervisor): a quick failure, as if the run died at once."""
        self.message = error
        if cause:
            self.log(cause)
        self.after_run(now, "could not start", None, True, error)

    def after_run(self, now, event, code, quick, what, short=None):
        """After a run or a failed start: restart at once, back off, give
        up (FATAL), or stay DOWN, as autorestart and startretries say."""
        config = self.config
        short = short or what.split(":")[0]  # "exec failed"
        self.fails = self.fails + 1 if quick else 0
        line = "%s: %s" % (event, what)
        if self.supervisor.shutting_down:
            self.want = "down"
            self.change_state(DOWN, short, line)  # -> DOWN
            return
        decision = restart_decision(config, code, quick, self.fails)
        if decision.action == "restart" and decision.delay == 0:
            self.message = what if quick else ""
            # -> STARTING at once: fork first, then log.
            self.spawn(now, line + "; restarting at once")
        elif decision.action == "restart":
            self.message = what
            self.timers["backoff"] = now + decision.delay
            self.change_state(BACKOFF, short, "%s; restarting in %s (%d "
                              "quick failure%s in a row)" % (
                                  line, format_seconds(decision.delay),
                                  self.fails, "" if self.fails == 1 else "s"))
            if self.fails == 3:
                self.supervisor.alerts.send(self, "crash_loop", "%d quick "
                                            "failures in a row, the last: %s"
                                            % (self.fails, what))
        elif decision.action == "fatal":
            self.message = "gave up after %d quick failures in a row: %s" % (
                self.fails, what)
            self.change_state(FATAL, short, "gave up: %d quick failures in a "
                              "row, the last: %s; start it again with "
                              "--start %s" % (self.fails, what, self.name),
                              LOG_ERR)  # -> FATAL until started
            self.supervisor.alerts.send(self, "fatal", self.message)
        else:
            # -> DOWN: autorestart says so; "done" ended as designed.
            self.message = "" if decision.action == "done" else what
            if decision.action == "done":
                self.want = "down"
            self.change_state(DOWN, short, "%s; not restarted (autorestart "
                              "= %s)" % (line, config.autorestart))

    def stopping_exited(self, now, run, code, what):
        """STOPPING: the main process is gone; the rest of its tree may
        linger."""
        self.check_run(run, now)

    def stop_finished(self, now, run):
        """STOPPING -> DOWN, or -> STARTING when a restart is wanted: the
        run's tree is gone (and the retiring runs' too)."""
        if run is not self.run or self.retiring:
            return  # retired_gone() comes back here when they are gone
        self.run = None
        line = "stopped: " + run.gone_words()
        if self.want == "up" and not self.supervisor.shutting_down and \
                self.pending_backoff:
            self.pending_backoff = False
            self.log(line)
            self.after_run(now, "not ready", None, True, self.message)
        elif self.want == "up" and not self.supervisor.shutting_down:
            self.spawn(now, line)
        else:
            self.change_state(DOWN, "stopped", line)
            self.settle_down()

    def exit_out_of_turn(self, now, run, code, what):
        # Cannot happen: a process outside the running states.
        self.log("exited in state %s (%s); ignored" % (self.state, what),
                 LOG_WARNING)

    # -- the actions the transitions use -----------------------------------

    def spawn(self, now, cause=None):
        """Start a run: -> STARTING (UP with startsecs = 0; BACKOFF or FATAL
        when the start fails in the supervisor).  cause is the line about
        what led here (an exit): logged after the fork, so that logging is
        never on the restart path, but ahead of the "spawned" line.  In a
        burst of starts (thousands at start-up, or killed at once) those
        past the loop turn's slice wait for the next: STARTING with no
        process yet (why "queued"), so the loop reaps, answers and probes
        in between.  One whose dependencies are not ready waits for them
        (why "waiting"), as STARTING with no process, however long.
        """
        blockers = self.supervisor.deps.blockers(self)
        if blockers:
            self.change_state(STARTING, WAITING, None if self.waiting else
                              "waiting for %s before it starts" %
                              self.supervisor.deps.describe_wait(self))
            return
        if not self.supervisor.may_spawn(self, cause):
            self.change_state(STARTING, "queued")  # -> STARTING, no run yet
            return
        if self.pending_config is not None:
            self.apply_config(self.pending_config, now)
        config = self.config
        run = launch_run(self, now)
        if not isinstance(run, Run):
            self.spawn_failed(now, run, cause)
            return
        self.run = run
        pid = run.pid
        now = run.started_at  # its own, in a burst of starts
        # A fresh run: its probes and memory looks start afresh.
        self.health_fails = self.memory_over = 0
        self.cancel_probe()
        for name in ("probe", "probe_timeout", "memory"):
            self.timers.pop(name, None)
        if config.healthcheck:
            self.health = "unknown"
            self.timers["probe"] = now + max(0.05, min(
                config.startsecs, config.healthcheck_interval))
        if cause:
            self.log(cause)
        words, state = "spawned: pid %d" % pid, STARTING
        run.start_clock(now, config)
        if config.ready == "notify":
            self.notify_status = ""
            words += "; ready when it sends READY=1"
        elif not config.startsecs and not config.healthcheck:
            run.become_ready(now, config)  # startsecs = 0 trusts it at once
            state = UP
        self.change_state(state, "", words)
        self.judge_ready(now, None)

    def begin_stop(self, now, why):
        """STARTING/UP -> STOPPING: stop signal, then KILL at the deadline."""
        config, run = self.config, self.run
        # Orphans of the tree send no SIGCHLD when they become ours: look.
        self.supervisor.tree.scan(now)
        if self.next_run is not None:
            self.retire(self.next_run, now)  # it goes with the service
            self.next_run = None
        run.stop(now, config)
        if not config.stopasgroup:
            target = "pid %d" % run.pid
        elif run.pgid == run.pid:
            target = "process group %d" % run.pgid
        else:  # an adopted daemon, in the group its launcher led
            target = "process group %d of pid %d" % (run.pgid, run.pid)
        self.change_state(STOPPING, why, "stopping (%s): %s to %s" % (
            STOP_REASONS.get(why, why), signal_name(config.stopsignal),
            target))

    def close_exec_pipe(self, run):
        if run.exec_fd >= 0:
            self.supervisor.unwatch(run.exec_fd)
            os.close(run.exec_fd)
            run.exec_fd = -1

    def listen(self):
        """The held socket, bound now if it is not yet (a port that was in
        use at start-up or reload may be free by the next try).  Raises
        Failure: the start fails and backs off, as any failed start."""
        config = self.config
        if config.socket is not None and not self.listeners:
            self.listeners = self.supervisor.shared_listeners(config) or \
                open_listeners(config, self.supervisor.euid)

    def watch_pidfd(self, run, pidfd):
        run.pidfd = pidfd
        self.supervisor.watch(pidfd, EVENT_READ, lambda _mask: self.on_exited(
            run, None, self.supervisor.clock()))

    def close_pidfd(self, run):
        if run.pidfd is not None:
            self.supervisor.unwatch(run.pidfd)
            os.close(run.pidfd)
            run.pidfd = None

    # -- output ----------------------------------------------------------

    def keep_output(self, data, stream="stdout"):
        """Whole lines it wrote: kept for --tail, sent to its followers."""
        outputs = self.supervisor.outputs
        outputs.number += 1
        if self.recent is None:
            self.recent = Recent()
        self.recent.add(outputs.number, data, stream)
        for follow in self.followers:
            follow.feed(self, data, stream)

    def drain_output(self):
        for pipe in self.outputs or ():
            if pipe is not None:
                pipe.drain()

    def close_outputs(self):
        for pipe in self.outputs or ():
            if pipe is not None:
                pipe.drain()
                self.supervisor.outputs.release(pipe)
        self.outputs = None

    # -- config changes --------------------------------------------------

    def apply_config(self, config, now):
        """Take a new config: now for supervision keys, and for process keys
        only while no process runs (the caller restarts it).  Then the
        timers it needs: a health check or max_memory that a reload adds
        starts its looks now."""
        self.pending_config = None
        old = self.config
        self.config = config
        if any(getattr(old, k) != getattr(config, k) for k in OUTPUT_KEYS):
            self.close_outputs()  # the next run gets pipes for the new one
        if bool(old.healthcheck) != bool(config.healthcheck):
            self.health = "unknown" if config.healthcheck else "none"
        self.arm(now)
        if not config.healthcheck and self.state == STARTING:
            self.judge_ready(now, "up: no health check any more")

    # -- health ----------------------------------------------------------

    def cancel_probe(self):
        if self.probe is not None:
            self.probe.close()
            self.probe = None
        self.timers.pop("probe_timeout", None)

    # -- status ----------------------------------------------------------

    def outcome_since(self, mark):
        """Did a start or restart given when the spawn count was mark work?
        True once the service is up on a run started since; (the line a
        command prints, the reason) once it failed; None while under way.
        --start, --restart and a pool's rolling restart all ask this."""
        run = self.run
        if self.next_run is not None or self.state in (STARTING, STOPPING):
            return None
        if self.state == UP and run is not None and run.number > mark:
            return True
        if self.replace_failure and self.replace_failure[0] > mark:
            return self.message, self.replace_failure[1]
        if self.state in (BACKOFF, FATAL, DOWN):
            why = self.message or self.why or self.state
            return "did not start: " + why, why
        return None


def stderr_follows_stdout(config):
    """Does the child's fd 2 share stdout's pipe (or fd)?  Yes when asked
    (redirect_stderr), or when both name the same destination, except
    inherit, where each keeps the supervisor's own fd."""
    return config.redirect_stderr or (
        config.stderr_logfile == config.stdout_logfile
        and config.stdout_logfile != "inherit")


def stream_fd(dest, pipe, own_fd, devnull):
    """The fd a run gets for one stream (/dev/null where its pipe could not
    be made)."""
    if dest == "inherit":
        return own_fd
    if pipe is None:
        return devnull
    return pipe.write_fd


#: The machine: (state, event) -> handler.  A pair not listed is a
#: deliberate no-op (want_up while running, a probe while stopping ...).
TRANSITIONS = {}
for _state in (DOWN, FATAL, BACKOFF):
    TRANSITIONS[(_state, "want_up")] = Service.start_wanted
    TRANSITIONS[(_state, "restart")] = Service.start_wanted
    TRANSITIONS[(_state, "exited")] = Service.exit_out_of_turn
for _state in (STARTING, UP):
    TRANSITIONS[(_state, "ready")] = Service.run_ready
    TRANSITIONS[(_state, "not_ready")] = Service.run_not_ready
    TRANSITIONS[(_state, "probe")] = Service.start_probe
    TRANSITIONS[(_state, "probe_timeout")] = Service.probe_timed_out
    TRANSITIONS[(_state, "probe_failed")] = Service.restart_unhealthy
    TRANSITIONS[(_state, "watchdog")] = Service.watchdog_expired
    TRANSITIONS[(_state, "memory")] = Service.check_memory
    TRANSITIONS[(_state, "want_down")] = Service.stop_running
    TRANSITIONS[(_state, "restart")] = Service.restart_running
    TRANSITIONS[(_state, "exited")] = Service.run_ended
TRANSITIONS.update({
    (BACKOFF, "backoff"): Service.backoff_over,
    (BACKOFF, "want_down"): Service.give_up_retrying,
    (FATAL, "want_down"): Service.give_up_retrying,
    (DOWN, "want_down"): Service.settle_down,
    (STARTING, "probe_ok"): Service.first_probe_passed,
    (UP, "replace"): Service.retry_replacement,
    (STOPPING, "exited"): Service.stopping_exited,
    (STOPPING, "gone"): Service.stop_finished,
})

#: The overlap's machine: (role of the run, event) -> handler, for the
#: runs beside the serving one.
OVERLAP = {
    ("replacement", "ready"): Service.promote,
    ("replacement", "not_ready"): Service.replacement_overdue,
    ("replacement", "exited"): Service.replacement_ended,
    ("retiring", "exited"): Service.retired_exited,
    ("retiring", "gone"): Service.retired_gone,
}


# ===========================================================================
# Process trees
#
# The supervisor is the child subreaper of everything it starts: when a
# process of a service's tree dies, its children become ours, not PID 1's.
# They send no word when that happens (only when they die), so the tree is
# looked at (scan) after each batch of exits and before each stop: every
# child of ours that we did not start is an orphan, traced to its run by
# session, else by FCGIWATCH_SERVICE in its environment (never by a guess:
# a wrong guess would kill another service's process with this run's
# leftovers).  It becomes a member of that run: signalled with it,
# waited for by its stop, killed with its leftovers, and reaped by us at
# once.  Only our children are ever signalled this way: a pid we have not
# reaped cannot be recycled.  An orphan traced to no run is a stray,
# stopped at shutdown.  Where the kernel (before 3.4) or ctypes cannot make
# us a subreaper, none of this happens: process groups are polled, as
# before.
# ===========================================================================

def group_alive(pgid):
    """Is any process left in this process group?"""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_proc_stat(pid):
    """(command name, [field 3, field 4, ...]) of /proc/PID/stat, or None
    once the process is gone.  Index 0 is the state, 1 the parent, 2 the
    process group, 3 the session, 19 the start time.  The name is the
    process's own to set: it comes without control characters."""
    return read_proc_stat_path("/proc/%d/stat" % pid)


def read_proc_stat_path(path):
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses.
    close = data.rfind(b")")
    name = data[data.find(b"(") + 1:close].decode("utf-8", "replace")
    return printable(name), data[close + 2:].split()


def process_ids(pid):
    """(state, process group, session, name) of a process, or None."""
    info = read_proc_stat(pid)
    try:
        fields = info[1]
        return (fields[0].decode("ascii", "replace"), int(fields[2]),
                int(fields[3]), info[0])
    except (TypeError, IndexError, ValueError):
        return None


def process_start_time(pid):
    """Field 22 of /proc/PID/stat (start time in clock ticks), or None."""
    info = read_proc_stat(pid)
    try:
        return int(info[1][19])
    except (TypeError, IndexError, ValueError):
        return None


def is_same_process(pid, start_time):
    """Is pid still the process that started at start_time (not a zombie)?"""
    if not pid or start_time is None:
        return False
    info = read_proc_stat(pid)
    try:
        return int(info[1][19]) == start_time and info[1][0] != b"Z"
    except (TypeError, IndexError, ValueError):
        return False


def tree_rss(run):
    """Bytes of resident memory of a run's whole tree: its process group,
    its sessions, its members."""
    page = os.sysconf("SC_PAGE_SIZE")
    total = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        info = read_proc_stat(int(name))
        try:
            fields = info[1]
            pgid, sid, rss = int(fields[2]), int(fields[3]), int(fields[21])
        except (TypeError, IndexError, ValueError):
            continue
        if pgid == run.pgid or sid in run.sessions or \
                int(name) in run.members:
            total += rss
    return total * page


def list_children(pid):
    """The pids of pid's children.  Linux 3.5+ lists them in one file
    (task/PID/children: a single-threaded process's children all hang on
    its one thread); without it, every process's parent is looked up."""
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid), "rb") as handle:
            return [int(word) for word in handle.read().split()]
    except OSError:
        pass
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            info = read_proc_stat(int(name))
            if info and len(info[1]) > 1 and info[1][1] == b"%d" % pid:
                found.append(int(name))
    return found


def service_identity(name, state_dir):
    """What every run of a service carries in its environment, so that an
    orphan (and a leftover of a supervisor that died) can be traced to its
    service.  Added at spawn time, not in the config: a config that
    changes its environment restarts its services, and an upgrade by
    --reexec must not."""
    return ((SERVICE_VARIABLE.decode("ascii"), name),
            (STATE_DIR_VARIABLE.decode("ascii"), state_dir))


def process_exiting(pid):
    """True once a process has begun to exit (the kernel's PF_EXITING
    flag, field 9 of /proc/PID/stat) or is a zombie, and no thread of it
    lives on: its memory, and so its environment, may be gone while its
    children are not yet handed on to us.  A thread-group leader that
    ended alone while its other threads serve on looks the same from its
    own stat, and is anything but gone: it stays signallable by its pid."""
    info = read_proc_stat(pid)
    try:
        fields = info[1]
        exiting = fields[0] in (b"Z", b"X") or bool(int(fields[6]) & 0x4)
    except (TypeError, IndexError, ValueError):
        return False  # gone: reaped, so nothing to wait for
    return exiting and not live_threads(pid)


def live_threads(pid):
    """The ids of a process's threads other than its leader that are not
    zombies (a leader may end before them, with pthread_exit)."""
    try:
        names = os.listdir("/proc/%d/task" % pid)
    except OSError:
        return []
    found = []
    for name in names:
        if name.isdigit() and int(name) != pid:
            info = read_proc_stat_path("/proc/%d/task/%s/stat" % (pid, name))
            if info is not None and info[1][:1] not in ([b"Z"], [b"X"]):
                found.append(int(name))
    return found


def process_uid(pid):
    """The real uid of a process (/proc/PID/status), or None once it is
    gone.  The kernel's word: only root can change it."""
    try:
        with open("/proc/%d/status" % pid, "rb") as handle:
            for line in handle:
                if line.startswith(b"Uid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def service_named_in(pid):
    """The FCGIWATCH_SERVICE a process carries in its environment (as
    it was at exec), None without one, or "" when the environment is
    empty or cannot be read (an exiting process has no memory left to
    read; one run with env -i has none).  A leader that ended before its
    threads has none either: a live thread of it is read instead.  A hint
    only, which the process itself may have set: see Tree.identify."""
    places = ["/proc/%d/environ" % pid]
    places.extend("/proc/%d/task/%d/environ" % (pid, tid)
                  for tid in live_threads(pid)[:1])
    data = b""
    for place in places:
        try:
            with open(place, "rb") as handle:
                data = handle.read()
        except OSError:
            continue
        if data:
            break
    if not data:
        return ""
    for item in data.split(b"\0"):
        if item.startswith(SERVICE_VARIABLE + b"="):
            return item[len(SERVICE_VARIABLE) + 1:].decode("utf-8",
                                                           "replace")
    return None


def load_libc():
    """The C library, through ctypes, loaded once (ctypes costs about
    0.5 MB and 8 ms to import: paid once, by the supervisor only), or None
    where ctypes cannot load it."""
    if not _LIBC:
        try:
            import ctypes
            _LIBC.append(ctypes.CDLL(None, use_errno=True))
        except (ImportError, OSError):
            _LIBC.append(None)
    return _LIBC[0]


_LIBC = []


def become_subreaper():
    """Make ourselves the child subreaper of everything we start (Linux
    3.4+): a descendant orphaned by its parent's death becomes our child,
    not PID 1's, so we reap it at once (no zombie waits on an init that may
    never reap) and can stop it, even after it left its process group with
    setsid.  Returns None, or why it cannot be done."""
    libc = load_libc()
    if libc is None:
        return "ctypes cannot load the C library"
    try:
        if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0:
            return None
        import ctypes
        return os.strerror(ctypes.get_errno())
    except AttributeError:
        return "the C library has no prctl"


class Tree:
    """The members of every run, the strays, and the daemons adopted."""

    def __init__(self, supervisor):
        self.supervisor = supervisor
        self.subreaper = False
        self.members = {}         # pid -> Run, for the members of all runs
        self.strays = set()       # orphans no run claimed
        self.exiting = set()      # children exiting as we looked, unclaimed
        self.scanned = None       # loop time of the last scan
        self.stray_kill_at = None
        self.strays_killed = False
        self.news = []            # (run, pid, name) taken in, to log
        self.scan_due = None      # a scan put off after exits (scan_soon)
        self.ended = []           # the runs whose exits it is for

    def start(self):
        why = become_subreaper()
        self.subreaper = why is None
        if why is not None:
            self.supervisor.warn(
                "cannot become the child subreaper (%s; Linux 3.4 or later "
                "is needed): a process that leaves its service's process "
                "group is out of reach, and a stop waits for PID 1 to reap "
                "zombies" % why)

    def scan(self, now, ended=()):
        """Take in the children of ours that we did not start.  ended: the
        runs whose main process was just reaped (their orphans are why we
        look; the caller logs them with report() once it has acted on the
        exits).  A second scan in the same loop turn is skipped."""
        if not self.subreaper or (self.scanned == now and not ended):
            return
        self.scanned = now
        if self.ended:  # a scan put off is made now, with this one
            ended = list(ended) + self.ended
            self.ended, self.scan_due = [], None
        supervisor = self.supervisor
        new = [pid for pid in list_children(supervisor.pid)
               if pid not in supervisor.children and pid not in self.members
               and pid not in supervisor.helpers and pid not in self.strays]
        if not new:
            return
        sessions = self.sessions(ended)
        for pid in sorted(new):
            ids = process_ids(pid)
            if ids is None:
                continue  # not ours after all (a reused number read late)
            _state, pgid, sid, name = ids
            if sid in supervisor.alerts.sessions:
                self.strays.add(pid)  # an alert command's (mail forks)
                continue
            run = sessions.get(sid) or sessions.get(pgid)
            service = None if run is not None else self.identify(pid)
            if run is None and service is None and process_exiting(pid):
                # Its stat read again, after identify() found nothing (an
                # exit empties the environment): PF_EXITING is set by then.
                # Exiting as we look (a double fork's middle process): its
                # reaping, or the daemon it hands us, will tell.  Not a
                # stray; adopt() waits for it when it may hold the daemon.
                self.exiting.add(pid)
                continue
            if run is None and service is not None and \
                    service.run is not None and service.run.pidfd is None:
                run = service.run  # it left its session, with setsid
            if run is None and service is not None and \
                    service.config.killasgroup:
                # Left by a run of a service that has none now (it ended,
                # and the next has not started): what a run leaves goes.
                service.log("killed pid %d (%s), left behind by a run "
                            "that ended" % (pid, name), LOG_WARNING)
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                self.strays.add(pid)  # reaped as a stray; logged once
                continue
            if run is None:
                self.strays.add(pid)
                supervisor.log("pid %d (%s), orphaned by a process we do "
                               "not know, is now our child; it is stopped "
                               "at shutdown" % (pid, name))
                continue
            self.take_in(run, pid, pgid, sid, name)
            sessions[sid] = run
        if not ended:
            self.report()

    def identify(self, pid):
        """The service an orphan that left its run's session belongs to,
        or None: by what its user cannot forge.  Its environment's
        FCGIWATCH_SERVICE counts only where its uid is the one that service
        runs as (a process may set any variable, never its uid); without a
        name that fits, its uid decides when exactly one service runs as
        that user.  Several services of one user cannot be told apart by a
        process that cleared its environment: it is a stray, stopped at
        shutdown (README: give each service a user of its own)."""
        uid = process_uid(pid)
        if uid is None:
            return None
        services = self.supervisor.services
        named = service_named_in(pid)
        service = services.get(named) if named else None
        if service is not None and self.supervisor.run_uid(
                service.config) == uid:
            return service
        found = [s for s in services.values()
                 if self.supervisor.run_uid(s.config) == uid]
        return found[0] if len(found) == 1 else None

    def scan_soon(self, now, ended):
        """A scan for the orphans of these runs' exits, SCAN_DELAY from
        now: their new runs start first."""
        if not self.subreaper:
            return
        self.ended.extend(ended)
        if self.scan_due is None:
            self.scan_due = now + SCAN_DELAY

    def scan_if_due(self, now):
        if self.scan_due is not None and now >= self.scan_due:
            ended, self.ended, self.scan_due = self.ended, [], None
            self.scan(now, ended)
            self.report()

    def report(self):
        """Log the orphans taken in, once each, for runs that go on: not
        those adopted, nor those of a run that is over or being stopped
        (the stop's and the leftovers' lines say enough)."""
        news, self.news = self.news, []
        for run, pid, name in news:
            service = run.service
            if self.members.get(pid) is not run or run is not service.run \
                    or run.stopping:
                continue
            run.orphans_seen += 1
            if run.orphans_seen <= ORPHANS_LOGGED:
                service.log("pid %d (%s) lost its parent and is now our "
                            "child, part of the service's process tree"
                            % (pid, name))
            elif run.orphans_seen == ORPHANS_LOGGED + 1:
                service.log("more of its processes lost their parent; no "
                            "more of them are logged for this run")

    def sessions(self, ended):
        """session id -> Run, for every run that may have orphans."""
        runs = []
        for service in self.supervisor.services.values():
            runs.extend(run for run in [service.run, service.next_run]
                        + service.retiring
                        if run is not None and run.pidfd is None)
        runs.extend(self.members.values())
        runs.extend(ended)
        found = {}
        for run in runs:
            for sid in run.sessions:
                found[sid] = run
        return found

    def take_in(self, run, pid, pgid, sid, name):
        """An orphan of run's tree is ours: a member, treated as the run
        is (signalled when it is being stopped, killed when it is over)."""
        service = run.service
        run.members[pid] = pgid
        run.sessions.add(sid)
        self.members[pid] = run
        self.news.append((run, pid, name))
        config = service.config
        if run is not service.run and run is not service.next_run and \
                run not in service.retiring:
            if config.killasgroup:  # the run is over: so is its tree
                self.signal_member(run, pid, signal.SIGKILL)
        elif run.phase == RUN_SIGNALLED and config.stopasgroup:
            self.signal_member(run, pid, config.stopsignal)
            self.signal_member(run, pid, signal.SIGCONT)
        elif run.phase == RUN_KILLED and config.killasgroup:
            self.signal_member(run, pid, signal.SIGKILL)

    def signal_member(self, run, pid, number):
        try:
            if run.members.get(pid) == pid:
                os.killpg(pid, number)
            else:
                os.kill(pid, number)
        except (ProcessLookupError, PermissionError):
            pass

    def reaped(self, pid):
        """A child we did not start was reaped: the run it was a member
        of (to see whether its stop is over), or None."""
        self.exiting.discard(pid)
        run = self.members.pop(pid, None)
        if run is not None:
            run.members.pop(pid, None)
            return run
        self.strays.discard(pid)
        return None

    def adopt(self, run, now):
        """The run's main process exited 0 at once: if it left a process
        in the background, that one becomes the run's main process.  The
        lowest pid in a session of its own, else the lowest pid; the others
        stay members.  Returns (pid, log it?) or None."""
        def alive():
            found = []
            for pid in sorted(run.members):
                ids = process_ids(pid)
                if ids is not None and (ids[0] != "Z" or live_threads(pid)):
                    found.append((pid, ids))
            return found
        found = alive()
        for _try in range(3):
            if found:
                break
            # A double fork's middle process hands us the daemon only as
            # it turns into a zombie: wait for those exiting (it may have
            # just become a member, exiting), then look again.
            self.wait_exiting([pid for pid in run.members
                               if process_exiting(pid)])
            if not self.rescan(now, run):
                break
            found = alive()
        if not found:
            return None
        fresh = [item for item in found if item[1][2] != run.session]
        pid, (_state, pgid, sid, _name) = (fresh or found)[0]
        # The middle process of a double fork was adopted first: the
        # daemon in its session is news to nobody.
        logged = not run.adopted or sid != run.session
        del run.members[pid]
        del self.members[pid]
        self.supervisor.children[pid] = run
        run.pid, run.pgid, run.session = pid, pgid, sid
        run.sessions.add(sid)
        run.start_time, run.exit_words = None, None
        run.started_at, run.started_wall = now, time.time()
        run.adopted = True  # its phase starts again: Service.adopt_daemon
        return pid, logged

    def wait_exiting(self, more=()):
        """Wait until the children of ours that were exiting, unclaimed
        (and more), are zombies (not reaped: the loop does that), for EXIT_SETTLE at
        most.  Past its PF_EXITING flag a process has only its files and
        its children to hand on: microseconds, or about 20 ms for each
        256 MB of memory it frees first (measured here), and only an
        adoption waits."""
        deadline = time.monotonic() + EXIT_SETTLE
        for pid in sorted(self.exiting.union(more)):
            while time.monotonic() < deadline:
                try:
                    info = os.waitid(os.P_PID, pid, os.WEXITED |
                                     os.WNOHANG | os.WNOWAIT)
                except ChildProcessError:
                    break  # reaped already
                except InterruptedError:
                    continue
                if info is not None:
                    break  # a zombie now: its children are ours
                time.sleep(0.001)

    def rescan(self, now, run):
        """Look at our children again: the kernel's list of them can miss
        one that was forked while it was read.  True when run gained a
        member."""
        before = len(run.members)
        self.scanned = None
        self.scan(now, [run])
        return len(run.members) > before

    def leftovers(self):
        """The processes shutdown must still end: strays, and members of
        runs that are over whose service kills as a group."""
        left = set(self.strays)
        left.update(pid for pid, run in self.members.items()
                    if run.service.config.killasgroup)
        return left

    def stop_leftovers(self, now):
        """At shutdown, once every service is down: TERM what is left,
        KILL it GROUP_KILL_GRACE later, then give up.  True while there is
        something to wait for."""
        left = self.leftovers()
        if not left:
            return False
        if self.stray_kill_at is None:
            self.supervisor.log("stopping %d processes left by runs that "
                                "are over: pids %s" % (len(left), ", ".join(
                                    str(pid) for pid in sorted(left))))
            numbers = (signal.SIGTERM, signal.SIGCONT)
            self.stray_kill_at = now + GROUP_KILL_GRACE
        elif now < self.stray_kill_at:
            return True
        elif not self.strays_killed:
            numbers = (signal.SIGKILL,)
            self.strays_killed = True
            self.stray_kill_at = now + GROUP_KILL_GRACE
        else:
            self.supervisor.log("pids %s outlived KILL; not waiting any "
                                "longer" % ", ".join(
                                    str(pid) for pid in sorted(left)),
                                LOG_WARNING)
            return False
        for pid in left:
            for number in numbers:
                try:
                    os.kill(pid, number)
                except (ProcessLookupError, PermissionError):
                    pass
        return True

    def deadline(self):
        return self.stray_kill_at if self.leftovers() else None


# ===========================================================================
# Readiness from the program (sd_notify)
#
# With ready = notify a run is ready when it says so: systemd's sd_notify
# protocol, which uWSGI, php-fpm, go-systemd and python's sdnotify speak.
# The supervisor gives such runs NOTIFY_SOCKET: a datagram socket in
# state_dir for each such service, read in the one loop, mode 0600 and
# owned by the service's user, so that no other user can send to it (nor
# fill its queue, so that the run's own READY=1 would find it full).  Each
# datagram carries its sender's credentials (SO_PASSCRED; the kernel fills
# them in and only root may forge them), and counts only when that pid is
# a process of this service's run.
# ===========================================================================

#: The socket of supervisors before per-service sockets: bound again after
#: a --reexec from one, for the runs carried over, which still send there.
NOTIFY_SOCKET = "notify.sock"


def notify_socket_path(state_dir, name):
    """state_dir/notify.NAME.sock, or a digest of NAME where the path would
    be too long for a unix socket."""
    path = os.path.join(state_dir, "notify.%s.sock" % name)
    if len(path.encode("utf-8", "replace")) > 100:
        import hashlib
        path = os.path.join(state_dir, "notify.%s.sock" % hashlib.sha256(
            name.encode("utf-8", "replace")).hexdigest()[:16])
    return path


#: Largest datagram read; sd_notify messages are a few lines.
NOTIFY_MAX = 4096


def parse_notify(data):
    """An sd_notify datagram as {name: value}: newline-separated NAME=VALUE
    pairs; anything else is skipped.

    >>> sorted(parse_notify(b"READY=1\\nSTATUS=Serving 4 workers\\nbad\\n")
    ...        .items())
    [('READY', '1'), ('STATUS', 'Serving 4 workers')]
    """
    fields = {}
    for line in data.decode("utf-8", "replace").split("\n"):
        name, sep, value = line.partition("=")
        if sep and name and name.isupper():
            fields[name] = value
    return fields


class NotifySocket:
    """Where the runs of a ready = notify service say READY=1: its own
    socket, only its user may send to (owner: (uid, gid), None for ours);
    service None is the shared socket of older versions (see
    NOTIFY_SOCKET)."""

    def __init__(self, supervisor, service=None, owner=None):
        self.supervisor = supervisor
        self.service, self.owner = service, owner
        state_dir = supervisor.settings.state_dir
        self.path = os.path.join(state_dir, NOTIFY_SOCKET) if service is \
            None else notify_socket_path(state_dir, service)
        self.sock = None
        self.bound = None
        self.strangers = set()    # pids told about once
        self.listen()

    def listen(self):
        """Bind (again, after state_dir was removed), mode 0600 from the
        first moment, then give it to the service's user: state_dir is
        ours alone, so nobody can swap the file in between."""
        self.close()
        self.sock, self.bound = bind_state_socket(
            self.path, socket.SOCK_DGRAM, 0o177 if self.service else 0o111)
        if self.owner is not None:
            try:
                os.chown(self.path, self.owner[0], self.owner[1],
                         follow_symlinks=False)
            except OSError as exc:
                self.close()
                raise Failure("cannot give %s to uid %d: %s" % (
                    self.path, self.owner[0], exc.strerror))
            self.bound = path_identity(self.path)
        self.supervisor.watch(self.sock.fileno(), EVENT_READ,
                              self.on_readable)

    def ours(self):
        return path_identity(self.path) == self.bound

    def close(self):
        if self.sock is not None:
            self.supervisor.unwatch(self.sock.fileno())
            self.sock.close()
            self.sock = None
            if self.ours():
                try:
                    os.unlink(self.path)
                except OSError:
                    pass

    def on_readable(self, _mask):
        supervisor = self.supervisor
        size = struct.calcsize("3i")
        for _ in range(64):  # a burst, then back to the loop
            try:
                data, ancillary, _flags, _address = self.sock.recvmsg(
                    NOTIFY_MAX, socket.CMSG_SPACE(size))
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            pid = None
            for level, kind, value in ancillary:
                if level == socket.SOL_SOCKET and \
                        kind == socket.SCM_CREDENTIALS and len(value) >= size:
                    pid = struct.unpack("3i", value[:size])[0]
            run = supervisor.children.get(pid) or \
                supervisor.tree.members.get(pid)
            if run is None or self.service not in (None, run.service.name):
                if pid not in self.strangers and len(self.strangers) < 100:
                    self.strangers.add(pid)
                    supervisor.log("notify socket %s: a message from pid %s,"
                                   " not a process of %s; ignored" % (
                                       self.path, pid, self.service or
                                       "any service"))
                continue
            run.service.on_notify(run, parse_notify(data),
                                  supervisor.clock())


# ===========================================================================
# Alerts
#
# alert_command runs on trouble: crashed (a run that was up ended
# unexpectedly), crash_loop (backoff entered a third time in a row),
# fatal, health_failing (a health, watchdog or max_memory restart), and
# recovered (up again after one of those).  At most one alert per service
# and kind per alert_interval; the next one says how many were held back.
# Each runs detached, in a session of its own, as the supervisor's user,
# with a clean environment and the text on stdin, bounded by
# ALERT_TIMEOUT; a few at once at most, the rest wait their turn.  Nothing
# here can delay the loop or a restart: a failing alert is a log line.
# ===========================================================================

ALERT_TIMEOUT = 30.0
ALERTS_AT_ONCE = 4


class Alerts:
    """The alerts waiting, running and held back."""

    def __init__(self, supervisor):
        self.supervisor = supervisor
        self.last = {}            # (service, kind) -> monotonic time sent
        self.held = {}            # (service, kind) -> count held back
        self.queue = []           # (service, kind, state, message)
        self.running = {}         # pid -> deadline
        self.sessions = set()     # the alert commands' sessions

    def send(self, service, kind, message):
        """Note trouble (or recovery) of a service; run the command now,
        later, or not at all (alert_interval)."""
        settings = self.supervisor.settings
        if not settings.alert_command:
            return
        if kind != "recovered":
            service.troubled = True
        now = self.supervisor.clock()
        key = (service.name, kind)
        sent = self.last.get(key)
        if sent is not None and now - sent < settings.alert_interval:
            self.held[key] = self.held.get(key, 0) + 1
            return
        self.last[key] = now
        held = self.held.pop(key, 0)
        self.queue.append((service.name, kind, service.state, message, held))
        self.start_waiting()

    def start_waiting(self):
        while self.queue and len(self.running) < ALERTS_AT_ONCE:
            self.run(*self.queue.pop(0))

    def run(self, name, kind, state, message, held):
        supervisor = self.supervisor
        settings = supervisor.settings
        host = socket.gethostname()
        text = "%s: %s on %s (%s): %s%s\n" % (
            name, kind.replace("_", " "), host, state, message,
            " (%d more held back)" % held if held else "")
        env = {"PATH": settings.path, "FCGIWATCH_SERVICE": name,
               "FCGIWATCH_EVENT": kind, "FCGIWATCH_STATE": state,
               "FCGIWATCH_MESSAGE": message, "FCGIWATCH_HOST": host,
               "FCGIWATCH_SUPPRESSED": "%d" % held}
        for variable in ("HOME", "USER", "LOGNAME", "LANG"):
            if variable in os.environ:
                env[variable] = os.environ[variable]
        helper = Helper(argv=settings.alert_command,
                        env=tuple(sorted(env.items())), directory="/",
                        umask=0o022, uid=None, gid=None, groups=())
        read_fd, write_fd = os.pipe()
        try:
            os.write(write_fd, text.encode("utf-8", "replace")[:60000])
            os.close(write_fd)
            write_fd = -1
            pid, err_fd = spawn_child(helper, read_fd, supervisor.devnull,
                                      supervisor.devnull,
                                      supervisor.reset_signals,
                                      supervisor.home_fd)
        except (OSError, SpawnError) as exc:
            supervisor.warn("alert_command could not start: %s" % exc)
            return
        finally:
            os.close(read_fd)
            if write_fd >= 0:
                os.close(write_fd)
        if err_fd >= 0:
            os.close(err_fd)
        self.sessions.add(pid)
        self.running[pid] = supervisor.clock() + ALERT_TIMEOUT
        supervisor.helpers[pid] = lambda status: self.ended(pid, kind, name,
                                                            status)

    def ended(self, pid, kind, name, status):
        self.running.pop(pid, None)
        if status != 0:
            self.supervisor.warn("alert_command for %s (%s): %s" % (
                name, kind, decode_wait_status(status)[2]))
        self.start_waiting()

    def deadline(self):
        return min(self.running.values()) if self.running else None

    def check(self, now):
        """KILL an alert command that outran ALERT_TIMEOUT (its session:
        whatever it started too)."""
        for pid, deadline in list(self.running.items()):
            if now >= deadline:
                self.running[pid] = now + GROUP_KILL_GRACE
                self.supervisor.warn("alert_command (pid %d) still running "
                                     "after %d s; killed" % (
                                         pid, ALERT_TIMEOUT))
                try:
                    os.killpg(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass


# ===========================================================================
# Health probes
#
# A process that is alive but no longer answers is the outage that
# daemontools, runit and supervisord miss.  A probe is one non-blocking
# socket in the supervisor's select(), with a deadline: it can be slow or
# stuck without ever delaying anything else.  The protocol parts are pure
# functions: bytes to send, and a judge of the bytes received.
# ===========================================================================

FCGI_BEGIN_REQUEST, FCGI_END_REQUEST, FCGI_PARAMS, FCGI_STDIN = 1, 3, 4, 5
FCGI_STDOUT = 6
FCGI_GET_VALUES, FCGI_GET_VALUES_RESULT, FCGI_UNKNOWN_TYPE = 9, 10, 11
FCGI_RESPONDER = 1

#: Largest answer a probe reads before judging it.
PROBE_READ_MAX = 65536


def fcgi_record(kind, request_id, content=b""):
    """One FastCGI record: 8-byte header, content, padding to 8 bytes."""
    padding = -len(content) % 8
    return struct.pack("!BBHHBx", 1, kind, request_id, len(content),
                       padding) + content + b"\0" * padding


def fcgi_pairs(pairs):
    """FastCGI name-value pairs: 1-byte lengths up to 127, else 4 bytes.

    >>> fcgi_pairs([(b"A", b"")])
    b'\\x01\\x00A'
    """
    out = []
    for name, value in pairs:
        for length in (len(name), len(value)):
            out.append(struct.pack("!B", length) if length < 128
                       else struct.pack("!I", length | 0x80000000))
        out.append(name + value)
    return b"".join(out)


def parse_fcgi_pairs(data):
    """Inverse of fcgi_pairs; raises ValueError on a malformed body."""
    pairs, at = [], 0
    while at < len(data):
        lengths = []
        for _ in range(2):
            if at >= len(data):
                raise ValueError("truncated name-value pair")
            if data[at] < 128:
                lengths.append(data[at])
                at += 1
            else:
                if at + 4 > len(data):
                    raise ValueError("truncated length")
                lengths.append(struct.unpack("!I", data[at:at + 4])[0]
                               & 0x7fffffff)
                at += 4
        end = at + lengths[0] + lengths[1]
        if end > len(data):
            raise ValueError("truncated name-value pair")
        pairs.append((data[at:at + lengths[0]], data[at + lengths[0]:end]))
        at = end
    return pairs


def parse_fcgi_records(data):
    """Split bytes into complete records [(type, id, content)] and the rest.
    Raises ValueError when the bytes are not FastCGI version 1."""
    records, at = [], 0
    while len(data) - at >= 8:
        version, kind, request_id, length, padding = struct.unpack(
            "!BBHHBx", data[at:at + 8])
        if version != 1:
            raise ValueError("not FastCGI (version byte %d)" % version)
        end = at + 8 + length + padding
        if end > len(data):
            break
        records.append((kind, request_id, data[at + 8:at + 8 + length]))
        at = end
    return records, data[at:]


def fcgi_values_request():
    """FCGI_GET_VALUES for the three variables the spec defines."""
    return fcgi_record(FCGI_GET_VALUES, 0, fcgi_pairs(
        [(b"FCGI_MAX_CONNS", b""), (b"FCGI_MAX_REQS", b""),
         (b"FCGI_MPXS_CONNS", b"")]))


def judge_fcgi_values(data, eof):
    """(True, ""), (False, why), or None while more bytes may come.

    >>> judge_fcgi_values(fcgi_record(10, 0, fcgi_pairs([(b"A", b"1")])),
    ...                   False)
    (True, '')
    """
    try:
        records, _rest = parse_fcgi_records(data)
    except ValueError as exc:
        return False, str(exc)
    for kind, request_id, content in records:
        if kind == FCGI_GET_VALUES_RESULT and request_id == 0:
            try:
                parse_fcgi_pairs(content)
            except ValueError as exc:
                return False, "malformed FCGI_GET_VALUES_RESULT: %s" % exc
            return True, ""
        if kind == FCGI_UNKNOWN_TYPE and request_id == 0:
            return True, ""  # it speaks FastCGI, just not this record
    if eof:
        return False, "closed the connection without answering" if not \
            data else "answered no FCGI_GET_VALUES_RESULT"
    return None


def fcgi_get_request(endpoint):
    """A responder GET of the endpoint's path, as a web server sends it."""
    path = endpoint.path or "/"
    script, _sep, query = path.partition("?")
    if endpoint.family == socket.AF_UNIX:
        host, port = "localhost", "80"
    else:
        host, port = str(endpoint.address[0]), str(endpoint.address[1])
    params = [("GATEWAY_INTERFACE", "CGI/1.1"), ("REQUEST_METHOD", "GET"),
              ("SCRIPT_NAME", ""), ("PATH_INFO", script),
              ("REQUEST_URI", path), ("QUERY_STRING", query),
              ("SERVER_NAME", host), ("SERVER_PORT", port),
              ("SERVER_PROTOCOL", "HTTP/1.0"), ("SERVER_SOFTWARE",
                                                "fcgiwatch/" + VERSION),
              ("REMOTE_ADDR", "127.0.0.1"), ("HTTP_HOST", host),
              ("HTTP_USER_AGENT", "fcgiwatch health check")]
    body = fcgi_pairs([(k.encode(), v.encode("utf-8")) for k, v in params])
    return (fcgi_record(FCGI_BEGIN_REQUEST, 1, struct.pack(
        "!HB5x", FCGI_RESPONDER, 0)) + fcgi_record(FCGI_PARAMS, 1, body)
        + fcgi_record(FCGI_PARAMS, 1) + fcgi_record(FCGI_STDIN, 1))


def status_of_headers(head):
    """The status a CGI response's headers give (no Status: means 200)."""
    for line in head.split(b"\n"):
        name, _sep, value = line.partition(b":")
        if name.strip().lower() == b"status":
            digits = value.strip()[:3]
            return int(digits) if digits.isdigit() else 0
    return 200


def judge_fcgi_response(data, eof):
    """Judge the STDOUT of a responder request by its Status header.

    >>> judge_fcgi_response(fcgi_record(6, 1, b"Status: 500 Oops\\r\\n\\r\\n"),
    ...                     False)
    (False, 'answered Status 500')
    """
    try:
        records, _rest = parse_fcgi_records(data)
    except ValueError as exc:
        return False, str(exc)
    stdout = b"".join(c for k, i, c in records if k == FCGI_STDOUT and i == 1)
    ended = any(k == FCGI_END_REQUEST and i == 1 for k, i, c in records)
    for separator in (b"\r\n\r\n", b"\n\n"):
        if separator in stdout:
            status = status_of_headers(stdout.split(separator, 1)[0])
            if 200 <= status < 400:
                return True, ""
            return False, "answered Status %d" % status
    if ended or eof:
        return False, "ended the request without a response header"
    return None


def http_request(endpoint):
    host = endpoint.address[0]
    if ":" in str(host):
        host = "[%s]" % host
    return ("GET %s HTTP/1.0\r\nHost: %s:%d\r\nUser-Agent: fcgiwatch health "
            "check\r\nConnection: close\r\n\r\n" % (
                endpoint.path or "/", host, endpoint.address[1])).encode(
                    "utf-8")


def judge_http(data, eof):
    """Judge an HTTP status line.

    >>> judge_http(b"HTTP/1.0 302 Found\\r\\n", False)
    (True, '')
    """
    if b"\n" not in data:
        return (False, "closed the connection without answering") if eof \
            else None
    parts = data.split(b"\n", 1)[0].split()
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or \
            not parts[1].isdigit():
        return False, "not an HTTP answer"
    status = int(parts[1])
    if 200 <= status < 400:
        return True, ""
    return False, "answered %d" % status


def probe_plan(endpoint):
    """(bytes to send, judge) for a health check endpoint; None, None for
    tcp://, where a connection is the whole test."""
    if endpoint.scheme == "tcp":
        return None, None
    if endpoint.scheme == "http":
        return http_request(endpoint), judge_http
    if endpoint.path and endpoint.family != socket.AF_UNIX:
        return fcgi_get_request(endpoint), judge_fcgi_response
    return fcgi_values_request(), judge_fcgi_values


class Probe:
    """One health check in flight, driven by the loop's select()."""

    def __init__(self, supervisor, service, now):
        config = service.config
        self.supervisor, self.service = supervisor, service
        self.endpoint = config.healthcheck
        self.timeout = config.healthcheck_timeout
        self.deadline = now + self.timeout
        self.outbuf, self.judge = probe_plan(self.endpoint)
        self.inbuf = b""
        self.connected = False
        self.sock = socket.socket(self.endpoint.family, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        try:
            self.sock.connect(self.endpoint.address)
        except (BlockingIOError, InterruptedError):
            pass  # EINPROGRESS: writable once connected
        except OSError as exc:
            self.done(False, "connect: %s" % (exc.strerror or exc))
            return
        supervisor.watch(self.sock.fileno(), EVENT_WRITE,
                         self.on_event)

    def on_event(self, mask):
        if self.sock is None:
            return
        if not self.connected:
            error = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                self.done(False, "connect: %s" % os.strerror(error))
                return
            self.connected = True
            if self.judge is None:
                self.done(True, "")
                return
        if self.outbuf:
            try:
                sent = self.sock.send(self.outbuf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.done(False, "send: %s" % (exc.strerror or exc))
                return
            self.outbuf = self.outbuf[sent:]
            if not self.outbuf:
                self.supervisor.watch(self.sock.fileno(),
                                      EVENT_READ, self.on_event)
            return
        try:
            data = self.sock.recv(PROBE_READ_MAX)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.done(False, "receive: %s" % (exc.strerror or exc))
            return
        self.inbuf += data
        verdict = self.judge(self.inbuf, not data or
                             len(self.inbuf) >= PROBE_READ_MAX)
        if verdict is not None:
            self.done(*verdict)

    def on_timeout(self, now):
        self.done(False, "timed out after %s" % format_seconds(self.timeout)
                  .replace(".0 s", " s"))

    def done(self, ok, why):
        self.close()
        if self.service.probe is self:
            self.service.probe = None
        self.service.on_probe_result(ok, why, self.supervisor.clock())

    def close(self):
        if self.sock is not None:
            self.supervisor.unwatch(self.sock.fileno())
            self.sock.close()
            self.sock = None


# ===========================================================================
# Pools: rolling restarts
#
# A pool's instances (numprocs) are restarted one at a time, so that its
# capacity never drops: each instance's restart (overlapping on a held
# socket) starts once the one before it is up with its new run.  One that
# fails pauses its roll: the instances after it keep their runs, each with
# "restart pending" in --status (a --restart waiting for them says why),
# until the failed one's own retry brings it up on the new version; then
# the roll goes on, so a pool never stays on two versions without saying
# so.  A newer restart of an instance takes it out of an older roll.
# ===========================================================================

class Roll:
    """One pool's restart, one instance at a time.  paused: the instance
    whose restart failed, while the roll waits for its retry."""

    def __init__(self, services):
        self.waiting = list(services)
        self.current = None
        self.mark = 0
        self.paused = None
        for service in services:
            service.roll_note = None  # an older roll's word is no news

    def start_next(self, now):
        service = self.waiting.pop(0)
        self.current, self.mark = service, service.spawns
        service.on_restart(now)


class Rolls:
    """The rolls under way."""

    def __init__(self, supervisor):
        self.supervisor = supervisor
        self.underway = []

    def restart(self, services, now):
        """Restart these: at once, except the instances of a pool, which
        roll."""
        for roll in list(self.underway):
            roll.waiting = [s for s in roll.waiting if s not in services]
            if roll.current in services or not roll.waiting:
                self.underway.remove(roll)
        by_program = {}
        for service in services:
            by_program.setdefault(service.config.program, []).append(service)
        for instances in by_program.values():
            if len(instances) > 1:
                self.underway.append(Roll(instances))
            else:
                instances[0].on_restart(now)
        if self.underway:
            self.advance(now)

    def position(self, service):
        """How many restarts of its pool come before this instance's."""
        for roll in self.underway:
            if service in roll.waiting:
                return roll.waiting.index(service) + 1
        return 0

    def advance(self, now):
        """Start the next instance of each roll whose current one is done:
        up again with a new run.  One that failed pauses its roll until it
        is."""
        supervisor = self.supervisor
        for roll in list(self.underway):
            while True:
                current = roll.current
                if current is not None and \
                        supervisor.services.get(current.name) is current:
                    outcome = current.outcome_since(roll.mark)
                    if outcome is None:
                        break  # still under way
                    if outcome is not True:
                        if roll.paused is None:
                            self.pause(roll, current, outcome[1])
                        break  # until its own retry comes up
                    if roll.paused is not None:
                        self.resume(roll)
                if not roll.waiting or supervisor.shutting_down:
                    self.underway.remove(roll)
                    break
                roll.start_next(now)

    def pause(self, roll, failed, why):
        """The instance failed: the ones after it keep their runs, each
        with a note for --status and for the --restart that waits for it."""
        roll.paused = failed
        for service in roll.waiting:
            service.roll_note = (service.spawns, "%s failed first (%s), so "
                                 "the rolling restart waits until it is up "
                                 "on the new version" % (failed.name, why))
        self.supervisor.status_dirty = True
        self.supervisor.log("%s: rolling restart paused: %s did not come "
                            "back (%s); %d instances keep their runs until "
                            "it does" % (failed.config.program, failed.name,
                                         why, len(roll.waiting)), LOG_ERR)

    def resume(self, roll):
        """The failed instance is up on the new version after all: the
        others follow, one at a time."""
        self.supervisor.log("%s: rolling restart goes on: %s is up on the "
                            "new version" % (roll.paused.config.program,
                                             roll.paused.name))
        roll.paused = None
        for service in roll.waiting:
            service.roll_note = None
        self.supervisor.status_dirty = True


# ===========================================================================
# Dependencies
#
# depends_on makes a small system of the services: a service starts only
# once what it names is ready (UP, by the one rule of judge_ready), and
# waits for as long as that takes, as STARTING with no run and why
# "waiting" (--status says for what).  Becoming ready is an event
# (Supervisor.service_ready), never a poll: the dependents that waited
# start in the same turn of the loop, and a dependent with
# dependency_restart restarts once a dependency's new run is ready.  A
# crash of a dependency leaves its dependents alone: systemd's Requires=
# without BindsTo=, docker compose's depends_on without restart: true.
#
# Stops go the other way, in waves (StopJob): a service is signalled only
# once every service of the stop that depends on it is down.  --stop of a
# dependency stops its dependents first, and shutdown stops in reverse
# dependency order, then by descending priority.
# ===========================================================================

def stop_waves(services, by_priority=False):
    """The names of services (configs) in the waves they stop in: each
    after every one of them that depends on it; with by_priority (a
    shutdown), each level by descending priority too.

    >>> S = namedtuple("S", "name depends_on priority")
    >>> stop_waves([S("db", (), 1), S("web", ("db",), 2), S("cron", (), 5)])
    [['web', 'cron'], ['db']]
    """
    names = set(s.name for s in services)
    dependents = {}
    for config in services:
        for name in config.depends_on:
            if name in names:
                dependents.setdefault(name, []).append(config.name)
    level = {}
    # Dependents before what they depend on: the reverse of start order.
    for name in reversed(start_order(services)):
        level[name] = max([level[d] + 1 for d in dependents.get(name, ())]
                          or [0])
    keys = {}
    for config in services:
        key = (level[config.name], -config.priority if by_priority else 0)
        keys.setdefault(key, []).append(config.name)
    return [keys[key] for key in sorted(keys)]


class StopJob:
    """A stop under way in waves: why (as on_want_down takes it), and the
    waves of service names still to go."""

    def __init__(self, why, waves):
        self.why, self.waves = why, waves


class Dependencies:
    """Who waits for whom, and the stops under way in waves."""

    def __init__(self, supervisor):
        self.supervisor = supervisor
        self.dependents = {}      # name -> [names of services needing it]
        self.jobs = []            # StopJobs under way

    def index(self):
        """Who depends on whom, after a start, a reload or a re-exec; and
        a service whose wait a reload ended starts."""
        self.dependents = {}
        services = self.supervisor.services
        for service in services.values():
            for name in service.config.depends_on:
                self.dependents.setdefault(name, []).append(service.name)
        now = self.supervisor.clock()
        for service in list(services.values()):
            if service.waiting and not self.blockers(service):
                service.spawn(now)

    def blockers(self, service):
        """The services this one depends on that are not ready."""
        services = self.supervisor.services
        return [other for other in (services.get(name) for name in
                                    service.config.depends_on)
                if other is not None and other.state != UP]

    def describe_wait(self, service):
        """'db (starting), cache (backoff)': what a service waits for."""
        return ", ".join("%s (%s)" % (other.name, other.state)
                         for other in self.blockers(service))

    def on_ready(self, service, now, renewed):
        """service's run became ready (renewed: a new run, not its first):
        its dependents that waited start, and those with
        dependency_restart restart onto the new run."""
        for name in self.dependents.get(service.name, ()):
            other = self.supervisor.services.get(name)
            if other is None or other.want != "up":
                continue
            if other.waiting:
                other.spawn(now)  # once the rest of what it needs is ready
            elif renewed and other.config.dependency_restart and \
                    other.run is not None and other.state in (STARTING, UP):
                other.log("restarting: %s has a new run, ready "
                          "(dependency_restart)" % service.name)
                other.on_restart(now)

    def closure(self, services, upward):
        """services and everything they depend on (upward), or everything
        that depends on them: names, dependencies first."""
        all_services = self.supervisor.services
        found, todo = set(), [s.name for s in services]
        while todo:
            name = todo.pop()
            if name in found or name not in all_services:
                continue
            found.add(name)
            todo.extend(all_services[name].config.depends_on if upward
                        else self.dependents.get(name, ()))
        return [name for name in start_order([
            s.config for s in all_services.values()]) if name in found]

    def stop(self, services, why, now):
        """Stop these in waves; what has no process stops at once.  Returns
        the waves (names) of those that run."""
        running = [s for s in services
                   if s.state in RUNNING_STATES and s.run is not None]
        for service in services:
            if service not in running:
                service.on_want_down(now, why)
        waves = stop_waves([s.config for s in running],
                           by_priority=why == "shutdown")
        self.jobs.append(StopJob(why, [list(w) for w in waves]))
        self.advance(now)
        return waves

    def cancel(self, services):
        """An order to start or restart these overrides a stop under way."""
        names = set(s.name for s in services)
        for job in self.jobs:
            job.waves = [[n for n in wave if n not in names]
                         for wave in job.waves]
        self.jobs = [job for job in self.jobs if any(job.waves)]

    def advance(self, now):
        """Signal each job's next wave once the wave before is down."""
        services = self.supervisor.services
        for job in list(self.jobs):
            while job.waves:
                wave = [services[n] for n in job.waves[0] if n in services]
                for service in wave:
                    if service.want != "down" or service.state in (
                            STARTING, UP, BACKOFF):
                        service.on_want_down(now, job.why)
                if any(s.state in RUNNING_STATES or s.retiring
                       for s in wave):
                    break
                job.waves.pop(0)
            if not job.waves:
                self.jobs.remove(job)


# ===========================================================================
# What the supervisor owns on disk
#
# state_dir holds the lock (a flock on the pid file, and beside it an
# abstract socket that no rm -rf can remove), the status file --status
# reads, the control and notify sockets; [fcgiwatch] metrics_file and
# [supervisord] pidfile live where the config says.  Each is written
# through the safe-path functions, and each may fail again and again (a
# full disk, a removed directory): one warning when it starts, one line
# when it works again (Trouble), never a crash.
# ===========================================================================

def lock_address(state_dir):
    """The abstract unix socket name that locks state_dir: its real path,
    or a digest of it where that is too long for a socket name."""
    real = os.path.realpath(state_dir)
    name = "fcgiwatch:" + real
    if len(name.encode("utf-8", "replace")) > 100:
        import hashlib
        name = "fcgiwatch:" + hashlib.sha256(
            real.encode("utf-8", "replace")).hexdigest()
    return "\0" + name


def bind_lock_socket(state_dir, euid):
    """Bind and listen on state_dir's lock socket (it also takes control
    requests: see ControlServer): (socket, None), or (None, who holds the
    name) where a process of another user took it first.  Raises
    AlreadyRunning when a supervisor of our user (or root's) holds it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(lock_address(state_dir))
        sock.listen(16)
    except OSError as exc:
        sock.close()
        if exc.errno != errno.EADDRINUSE:
            raise Failure("cannot take the lock of state_dir %s: %s" % (
                state_dir, exc.strerror))
        holder = lock_holder(state_dir)
        if holder is not None and holder[1] in (0, euid):
            raise AlreadyRunning(holder[0])
        if holder is None:
            return None, "bound by a process that does not answer"
        return None, "held by pid %d of %s" % (holder[0],
                                               user_label(holder[1]))
    sock.setblocking(False)
    return sock, None


def lock_holder(state_dir):
    """(pid, uid) of the process listening on state_dir's lock socket, as
    the kernel tells (SO_PEERCRED), or None.  Anyone may bind the name:
    see trusted_uids."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(1.0)
    try:
        sock.connect(lock_address(state_dir))
        return peer_credentials(sock)[:2]
    except OSError:
        return None
    finally:
        sock.close()


def peer_credentials(sock):
    """(pid, uid, gid) of a unix socket's peer, as the kernel says."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                            struct.calcsize("3i"))
    return struct.unpack("3i", creds)


def trusted_uids(state_dir):
    """Whose supervisor a client believes: root's, its own user's, and
    that of the user state_dir belongs to (root may ask a user's
    supervisor)."""
    uids = set((0, os.geteuid()))
    try:
        uids.add(os.stat(state_dir).st_uid)
    except OSError:
        pass
    return uids


def write_own_pid(fd):
    os.ftruncate(fd, 0)
    os.write(fd, b"%d\n" % os.getpid())
    os.fchmod(fd, 0o644)


def read_pid(fd):
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return int(os.read(fd, 64).split()[0])
    except (OSError, ValueError, IndexError):
        return None


def bind_state_socket(path, kind, umask):
    """A unix socket of ours at path in state_dir, replacing a stale one
    (we hold the lock), with its mode right from the first moment (the
    umask, not a chmod afterwards): (socket, what path_identity says of it
    now), non-blocking, listening if a stream.  Raises Failure."""
    try:
        os.unlink(path)
    except OSError:
        pass
    sock = socket.socket(socket.AF_UNIX, kind)
    if kind == socket.SOCK_DGRAM:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    old_umask = os.umask(umask)
    try:
        sock.bind(path)
        if kind == socket.SOCK_STREAM:
            sock.listen(16)
        bound = path_identity(path)
    except OSError as exc:
        sock.close()
        raise Failure("cannot listen on %s: %s" % (path, exc.strerror))
    finally:
        os.umask(old_umask)
    sock.setblocking(False)
    return sock, bound


def path_identity(path):
    """(st_dev, st_ino) of what is at path now, or None: whether a file we
    made is still the one there (state_dir may have been removed)."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


class Trouble:
    """Something that may fail on every try, such as a file written at each
    state change: one warning when it starts failing, one line when it
    works again, nothing in between.  problem: why, while it fails."""

    def __init__(self, supervisor):
        self.supervisor = supervisor
        self.problem = None

    def failed(self, why, warning):
        if self.problem is None:
            self.supervisor.warn(warning)
        self.problem = why

    def worked(self, line=None):
        if self.problem is not None and line:
            self.supervisor.log(line)
        self.problem = None


def own_directory(path, key, euid, create=True):
    """An fd of directory path (key: the config key that names it), made
    if need be, that nobody but us (and root) can change, nor the way to
    it: everything in it is written as us.  Raises Failure saying why
    not."""
    try:
        place = walk_path(path, euid, create=create, directory=True)
    except UnsafePath as exc:
        raise Failure("%s %s cannot be used safely: %s; choose a %s that "
                      "only root (and you) can change" % (key, path, exc,
                                                          key))
    except OSError as exc:
        raise Failure("cannot create %s %s: %s; create it or set %s in "
                      "[fcgiwatch]" % (key, path, exc.strerror, key))
    info = os.fstat(place.fd)
    problem = None
    if place.owner is not None or info.st_uid not in (euid, 0) or (
            info.st_uid == 0 and euid != 0):
        problem = "%s %s belongs to %s, not to us; choose another %s" % (
            key, path, user_label(place.owner if place.owner is not None
                                  else info.st_uid), key)
    elif info.st_mode & 0o022:
        problem = "%s %s is writable by others; chmod go-w %s" % (key, path,
                                                                  path)
    if problem:
        os.close(place.fd)
        raise Failure(problem)
    return place.fd


class StateDir:
    """state_dir and the supervisor's other files: the lock, the status
    file (and metrics_file with it), the pidfile."""

    def __init__(self, supervisor):
        self.supervisor = supervisor
        self.path = supervisor.settings.state_dir
        self.status_path = os.path.join(self.path, STATUS_FILE)
        self.lock_fd = -1
        self.lock_sock = None     # the abstract socket beside the flock
        self.lock_warning = None  # who squats its name, if anyone
        self.identity = None      # (st_dev, st_ino) of state_dir
        self.status_written = -STATUS_INTERVAL
        self.status_took = 0.0    # seconds the last status write took
        self.status = Trouble(supervisor)   # the status file
        self.metrics = Trouble(supervisor)  # metrics_file
        self.remade = Trouble(supervisor)   # state_dir, made again

    # -- the directory and the lock ----------------------------------------

    def make(self):
        """Create state_dir if need be and check that nobody else can
        change it or the way to it: everything in it is written as us."""
        path = self.path
        fd = own_directory(path, "state_dir", self.supervisor.euid)
        try:
            info = os.fstat(fd)
        finally:
            os.close(fd)
        self.identity = (info.st_dev, info.st_ino)
        logs = os.path.join(path, AUTO_LOG_DIR)
        if any(c.stdout_logfile.startswith(logs + "/") or
               c.stderr_logfile.startswith(logs + "/")
               for c in self.supervisor.config.services) and \
                not os.path.isdir(logs):
            try:
                os.mkdir(logs, 0o755)  # supervisord's AUTO log files
            except OSError as exc:
                raise Failure("cannot create %s: %s" % (logs, exc.strerror))

    def take_lock(self):
        """One supervisor per state_dir, held for our whole life.  The lock
        is a flock on the pid file in state_dir, which only root (or our
        user) can change; --status reads it without waking us.  Beside it,
        an abstract unix socket named after state_dir's real path, which no
        file operation can remove: after an rm -rf of state_dir a second
        supervisor still sees the first.  But anyone may bind any abstract
        name, so a holder of it counts only when it is of our own user (or
        root), as the kernel says (SO_PEERCRED); a squatter is named in a
        warning, and the flock alone decides."""
        self.lock_fd = self.open_pid_file(write=False)
        try:
            self.lock_sock, squatter = bind_lock_socket(
                self.path, self.supervisor.euid)
        except Failure:
            os.close(self.lock_fd)
            self.lock_fd = -1
            raise
        write_own_pid(self.lock_fd)
        if squatter:
            # Logged once logging is open (Supervisor.start).
            self.lock_warning = "the lock socket of state_dir %s is %s, " \
                "not by a supervisor: carrying on with the pid file's lock " \
                "alone" % (self.path, squatter)

    def open_pid_file(self, write=True):
        """The pid file, flocked, with our pid in it (write): its fd."""
        path = os.path.join(self.path, LOCK_FILE)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW
                         | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as exc:
            raise Failure("cannot open %s: %s" % (path, exc.strerror))
        # A --status reader holds a shared lock for an instant: try a while.
        deadline = time.monotonic() + 0.5
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    os.close(fd)
                    raise Failure("cannot lock %s: %s" % (path, exc.strerror))
                if time.monotonic() > deadline:
                    pid = read_pid(fd)
                    os.close(fd)
                    raise AlreadyRunning(pid)
                time.sleep(0.01)
        if write:
            write_own_pid(fd)
        return fd

    def carry_on(self, state):
        """After --reexec: the lock we held, handed over by fd number."""
        self.lock_fd = state["lock_fd"]
        fcntl.flock(self.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # still ours
        if state.get("lock_sock") is not None:
            self.lock_sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM,
                                           fileno=state["lock_sock"])
            self.lock_sock.setblocking(False)
        else:
            try:  # from a version that had no lock socket
                self.lock_sock = bind_lock_socket(self.path,
                                                  self.supervisor.euid)[0]
            except Failure as exc:
                sys.stderr.write("fcgiwatch: %s\n" % exc)
        try:
            info = os.stat(self.path)
            self.identity = (info.st_dev, info.st_ino)
        except OSError:
            pass  # gone: made again at the first status write

    def check(self):
        """Are state_dir, the pid file and the control socket still ours?
        An rm -rf (a cleaner, a tmpfiles rule) may remove them under us: we
        notice at the next status write or control request (no timer of
        our own) and make them again.  True when they were made again."""
        supervisor = self.supervisor
        try:
            info = os.stat(self.path)
            pid_file = os.stat(os.path.join(self.path, LOCK_FILE))
            held = os.fstat(self.lock_fd)
            if (info.st_dev, info.st_ino) == self.identity and (
                    pid_file.st_dev, pid_file.st_ino) == (
                        held.st_dev, held.st_ino) and \
                    (supervisor.control is None or
                     supervisor.control.file_socket_ours()):
                return False
        except OSError:
            pass
        if self.remade.problem is None:
            supervisor.warn("state_dir %s, or a file in it, was removed; "
                            "making them again (pid file, control socket, "
                            "status file)" % self.path)
        try:
            self.make()
            fd = self.open_pid_file()
            os.close(self.lock_fd)
            self.lock_fd = fd
            if supervisor.control is not None:
                supervisor.control.listen_file()
            for notify in supervisor.notify.values():
                notify.listen()
        except Failure as exc:
            self.remade.failed(str(exc), "cannot make state_dir %s again: "
                               "%s; --status and the control commands reach "
                               "us through our lock socket meanwhile" % (
                                   self.path, exc))
            return False
        self.remade.worked()
        supervisor.status_dirty = True
        return True

    def close(self):
        if self.lock_fd >= 0:
            os.close(self.lock_fd)
            self.lock_fd = -1
        if self.lock_sock is not None:
            self.lock_sock.close()
            self.lock_sock = None

    # -- the status file, metrics_file ---------------------------------------

    def next_write(self):
        """When the status file may be written again: STATUS_INTERVAL after
        the last write, or longer where a write takes long (thousands of
        services), so that writing it takes at most a twentieth of the
        supervisor's time however many services change how often."""
        return self.status_written + max(STATUS_INTERVAL,
                                         STATUS_SHARE * self.status_took)

    def write_status(self):
        """Replace the status file atomically; a failure is only a warning.

        Done once per loop turn, after the turn's forks, so a burst of 200
        exits costs one write and no restart waits for it.
        """
        import json
        supervisor = self.supervisor
        supervisor.status_dirty = False
        self.status_written = supervisor.clock()
        doc = supervisor.status_document()
        data = json.dumps(doc, separators=(",", ":"))
        data = data.encode("utf-8") + b"\n"
        euid = supervisor.euid
        try:
            try:
                replace_file(self.status_path, data, 0o644, euid)
            except FileNotFoundError:
                # state_dir was removed under us: make it again, and retry.
                if not self.check():
                    raise
                replace_file(self.status_path, data, 0o644, euid)
        except (OSError, UnsafePath) as exc:
            why = getattr(exc, "strerror", None) or str(exc)
            self.mark_status_stale()
            self.status.failed(why, "cannot write %s: %s; the last good one "
                               "is kept, marked stale, and --status asks the "
                               "supervisor instead until a write works (free "
                               "space on its filesystem, or choose another "
                               "state_dir)" % (self.status_path, why))
            return
        self.status.worked("%s is written again" % self.status_path)
        self.write_metrics(doc)
        self.status_took = supervisor.clock() - self.status_written

    def write_metrics(self, doc):
        """metrics_file, replaced whole (never through a link), with each
        status write: on state changes only, no timer."""
        path = self.supervisor.settings.metrics_file
        if not path:
            return
        try:
            replace_file(path, render_metrics(doc).encode("utf-8"), 0o644,
                         self.supervisor.euid)
        except (OSError, UnsafePath) as exc:
            why = getattr(exc, "strerror", None) or str(exc)
            self.metrics.failed(why, "cannot write metrics_file %s: %s" % (
                path, why))
            return
        self.metrics.worked("metrics_file %s is written again" % path)

    def mark_status_stale(self):
        """Clear the write bits of the status file we could not replace:
        a change of mode needs no free space, and tells --status to ask us
        instead (read_status)."""
        try:
            fd = os.open(self.status_path, os.O_RDONLY | os.O_NOFOLLOW
                         | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            return
        try:
            os.fchmod(fd, 0o444)
        except OSError:
            pass
        finally:
            os.close(fd)

    # -- [supervisord] pidfile ---------------------------------------------

    def write_pidfile(self):
        """[supervisord] pidfile: our pid there too, so that an existing
        logrotate rule's kill -USR1 $(cat PIDFILE) reaches us.  Replaced
        whole, never through a link (replace_file)."""
        supervisor = self.supervisor
        path = supervisor.settings.pidfile
        if not path:
            return
        try:
            replace_file(path, b"%d\n" % supervisor.pid, 0o644,
                         supervisor.euid)
        except (OSError, UnsafePath) as exc:
            supervisor.warn("cannot write the pidfile %s: %s" % (
                path, getattr(exc, "strerror", None) or exc))

    def remove_pidfile(self):
        supervisor = self.supervisor
        path = supervisor.settings.pidfile
        if not path:
            return
        try:
            place = walk_path(path, supervisor.euid)
        except (OSError, UnsafePath):
            return
        try:
            # O_NONBLOCK: a FIFO put there by the directory's owner must not
            # hold our shutdown (with the lock held) for as long as it likes.
            fd = os.open(place.name, os.O_RDONLY | os.O_NOFOLLOW
                         | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0),
                         dir_fd=place.fd)
            try:
                ours = stat.S_ISREG(os.fstat(fd).st_mode) and \
                    os.read(fd, 64).strip() == b"%d" % supervisor.pid
            finally:
                os.close(fd)
            if ours:  # else another program's by now
                os.unlink(place.name, dir_fd=place.fd)
        except OSError:
            pass
        finally:
            os.close(place.fd)


def orders_file_name(state_dir):
    """The standing orders' file in data_dir for the supervisor of
    state_dir: one data_dir may serve several supervisors.

    >>> orders_file_name("/run/fcgiwatch")
    'orders.run-fcgiwatch.json'
    """
    return "orders.%s.json" % (re.sub(r"[^A-Za-z0-9_.]+", "-", state_dir)
                               .strip("-") or "root")


def parse_orders(data, state_dir):
    """{name: "up" or "down"} from a standing orders file's bytes; raises
    ValueError saying what is wrong with it.

    >>> parse_orders(b'{"version": 1, "state_dir": "/s", '
    ...              b'"orders": {"web": "down"}}', "/s")
    {'web': 'down'}
    """
    import json
    try:
        doc = json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ValueError("not JSON")
    if not isinstance(doc, dict) or doc.get("version") != 1 or \
            not isinstance(doc.get("orders"), dict):
        raise ValueError("not a standing orders file of this version")
    if doc.get("state_dir") != state_dir:
        raise ValueError("written for the supervisor of state_dir %r"
                         % printable(str(doc.get("state_dir"))[:200]))
    orders = {}
    for name, order in doc["orders"].items():
        if not SERVICE_NAME_RE.match(name) or order not in ("up", "down"):
            raise ValueError("%r: %r is not a standing order" % (
                printable(name[:100]), printable(str(order)[:20])))
        orders[name] = order
    return orders


def read_orders(directory, state_dir, euid):
    """(orders, problem, damaged) from the standing orders file of the
    supervisor of state_dir in directory (data_dir): no file is no orders;
    one that cannot be used is a problem (a warning: the config's autostart
    decides), and damaged where it must not be written over unseen."""
    path = os.path.join(directory, orders_file_name(state_dir))
    words = "standing orders %s not used: %%s; the config's autostart " \
        "decides" % path
    try:
        place = walk_path(path, euid)
    except FileNotFoundError:
        return {}, None, False  # no data_dir yet: no orders
    except UnsafePath as exc:
        return {}, words % exc, True  # and never written through that path
    except OSError as exc:
        return {}, words % os_error_words(exc), False
    try:
        fd = os.open(place.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK,
                     dir_fd=place.fd)
    except FileNotFoundError:
        return {}, None, False
    except OSError as exc:
        return {}, words % os_error_words(exc), True
    finally:
        os.close(place.fd)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("not a regular file")
        if info.st_uid not in (euid, 0):
            raise ValueError("it belongs to %s" % user_label(info.st_uid))
        data = os.read(fd, Orders.MAX_BYTES + 1)
        if len(data) > Orders.MAX_BYTES:
            raise ValueError("over %d bytes" % Orders.MAX_BYTES)
        return parse_orders(data, state_dir), None, False
    except OSError as exc:
        return {}, words % os_error_words(exc), True
    except ValueError as exc:
        return {}, words % exc + ", and the next --stop or --start writes " \
            "it anew", True
    finally:
        os.close(fd)


class Orders:
    """The operator's standing orders: --stop and --start remembered in
    data_dir, so that a service stopped by request stays down (and one
    started by request stays up) across reloads, re-execs, a supervisor
    that died and a reboot.  Only orders that differ from the config's
    autostart are kept (name -> "up" or "down"); the config decides the
    rest.

    The file is replaced whole (a temporary file, fsync, rename), as a
    half-written or empty one would bring back what the operator
    stopped.  One that cannot be read is a warning, and the config
    decides; it is kept (as .damaged) when the next order replaces it.
    """

    MAX_BYTES = 1 << 20

    def __init__(self, supervisor):
        self.supervisor = supervisor
        settings = supervisor.settings
        self.directory = settings.data_dir
        self.name = orders_file_name(settings.state_dir)
        self.orders = {}
        self.damaged = False      # the file is there, and unreadable
        self.problem = Trouble(supervisor)

    def load(self):
        """Read the file, if there is one; never raises."""
        settings = self.supervisor.settings
        self.orders, problem, self.damaged = read_orders(
            self.directory, settings.state_dir, self.supervisor.euid)
        if problem:
            self.supervisor.warn(problem)

    def wanted_up(self, config):
        """Should this service run, by order or else by the config?"""
        order = self.orders.get(config.name)
        return order == "up" if order else config.autostart

    def normally(self, config):
        """The config's word where an order overrides it, else None."""
        if config.name in self.orders:
            return "up" if config.autostart else "down"
        return None

    def give(self, services, order):
        """The operator said --start ("up") or --stop ("down") of these."""
        changed = False
        for service in services:
            config = service.config
            wanted = order if (order == "up") != config.autostart else None
            if self.orders.get(config.name) != wanted:
                changed = True
                if wanted is None:
                    del self.orders[config.name]
                else:
                    self.orders[config.name] = wanted
        if changed or self.damaged:
            self.save()

    def prune(self, names):
        """Forget the orders of services that left the config."""
        gone = [name for name in self.orders if name not in names]
        for name in gone:
            del self.orders[name]
        if gone and not self.damaged:
            self.save()

    def save(self):
        """Replace the file whole; a failure is a warning (the orders hold
        in memory until the supervisor stops)."""
        import json
        supervisor = self.supervisor
        doc = {"version": 1, "state_dir": supervisor.settings.state_dir,
               "config": supervisor.settings.filename,
               "orders": dict(sorted(self.orders.items()))}
        data = (json.dumps(doc, indent=1) + "\n").encode("utf-8")
        temporary = ".%s.%d" % (self.name, os.getpid())
        fd = -1
        try:
            fd = own_directory(self.directory, "data_dir", supervisor.euid)
            if self.damaged:
                try:  # kept for whoever wants to see what it held
                    os.rename(self.name, self.name + ".damaged",
                              src_dir_fd=fd, dst_dir_fd=fd)
                except FileNotFoundError:
                    pass
            out = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC |
                          os.O_NOFOLLOW, 0o644, dir_fd=fd)
            try:
                os.write(out, data)
                os.fsync(out)
            finally:
                os.close(out)
            os.rename(temporary, self.name, src_dir_fd=fd, dst_dir_fd=fd)
            os.fsync(fd)
            self.damaged = False
            self.problem.worked("standing orders are written to %s again"
                                % self.directory)
        except (OSError, Failure) as exc:
            if fd >= 0:
                try:
                    os.unlink(temporary, dir_fd=fd)
                except OSError:
                    pass
            why = str(exc) if isinstance(exc, Failure) else \
                os_error_words(exc)
            self.problem.failed(why, "standing orders not written to %s: "
                                "%s; they hold until the supervisor stops"
                                % (self.directory, why))
        finally:
            if fd >= 0:
                os.close(fd)


# ===========================================================================
# Event loop
#
# All waiting happens in Supervisor.run(): find the earliest deadline, select
# on the wake-up pipe, the control socket, output pipes and probe sockets,
# then reap, serve, and fire due deadlines.  Signals arrive through
# signal.set_wakeup_fd(), djb's self-pipe written in C, so a SIGCHLD wakes
# select() at once.  When nothing is pending the timeout is None: an idle
# supervisor never wakes up.
# ===========================================================================

#: Open files the supervisor keeps for itself, beyond its services':
#: control connections (80 at most), logs, probes, the selector.
FDS_OWN = 160


def output_pipes(config):
    """How many output pipes a service holds (none for inherit: null has
    one, for its recent lines)."""
    count = 0 if config.stdout_logfile == "inherit" else 1
    if not stderr_follows_stdout(config) and \
            config.stderr_logfile != "inherit":
        count += 1
    return count


def fds_needed(config):
    """Open files a config needs: two a pipe for each service's output
    (kept for its life), its held socket, its notify socket, one while it
    starts, and the supervisor's own.

    >>> fds_needed(parse_config("[a]\\ncommand = x\\n", "/x.conf"))
    163
    """
    return FDS_OWN + sum(
        2 * output_pipes(s) + len(s.socket or ()) + (s.ready == "notify")
        + 1 for s in config.services)


def fill_standard_fds():
    """Make sure fds 0, 1 and 2 are open (on /dev/null if need be).

    Started from cron with stdin closed, the first pipe we made would
    otherwise become fd 0 and be mistaken for a child's stdin.
    """
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)


def open_home():
    """An fd on our working directory (/ if it was removed): posix_spawn
    starts a child in ours, so we step into the service's and back."""
    try:
        return os.open(".", os.O_RDONLY)
    except OSError:
        return os.open("/", os.O_RDONLY)


def release_free_memory():
    """Give the memory freed after start-up back to the system.

    Running fcgiwatch.py as a script compiles all of it on every start,
    and the compiler's ~10 MB, freed, stays in the process: every fork then
    copies page tables for it, which slows each restart.  glibc's
    malloc_trim returns it.  Skipped quietly where there is no glibc or no
    ctypes: only memory and a little fork time are at stake.
    """
    libc = load_libc()
    try:
        libc.malloc_trim(0)
    except AttributeError:
        pass  # no C library, or not glibc


def close_on_exec_inherited():
    """Mark every fd above 2 that we inherited close-on-exec, so a child
    gets only 0, 1 and 2 without closing thousands of numbers per spawn."""
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return
    for name in names:
        fd = int(name)
        if fd > 2:
            try:
                os.set_inheritable(fd, False)
            except OSError:
                pass


class Supervisor:
    """Owns the services, the pid map, the wake-up pipe and the control
    socket, and runs the one loop."""

    def __init__(self, config, foreground=True, clock=time.monotonic):
        self.config = config
        self.settings = config.globals
        self.foreground = foreground
        self.clock = clock
        self.pid = os.getpid()
        self.euid = os.geteuid()
        self.services = {}        # name -> Service, in priority order
        self.children = {}        # pid -> Run: our children, until reaped
        self.helpers = {}         # pid -> callback(status): our own helpers
        self.pending_signals = []
        self.status_dirty = True
        self.exit_code = None
        self.shutting_down = False
        self.syslog = None
        self.own_log = None
        self.outputs = Outputs(self)
        self.leftovers = Leftovers(self)
        self.handover = Handover(self)
        self.tree = Tree(self)
        self.notify = {}          # name -> NotifySocket, made when needed
        self.rolls = Rolls(self)  # pools restarted one at a time
        self.deps = Dependencies(self)  # depends_on; stops in waves
        self.orders = Orders(self)  # --stop and --start, remembered
        self.ready_listeners = []  # f(service, now): see service_ready
        self.start_queue = deque()  # services waiting for a slice
        self.spawned = 0          # starts made in this turn of the loop
        self.due = []             # heap of (time, number, service)
        self.touched = set()      # services whose due times may be sooner
        self.pushed = 0           # entries ever pushed: the heap's order
        self.alerts = Alerts(self)
        self.disk = StateDir(self)
        self.control = None
        self.rpc = None           # supervisord's XML-RPC, where configured
        self.devnull = -1
        self.home_fd = None       # our working directory, to return to
        self.selector = None
        self.wakeup_read = self.wakeup_write = -1
        self.started_wall = time.time()
        self.started = clock()
        self.reset_signals = ()
        self.generation = 0       # times re-executed

    # -- logging ---------------------------------------------------------

    def log(self, message, severity=LOG_INFO):
        """A supervisor event: stderr in the foreground, log_file, syslog."""
        # A service's words may be in it (a process name, a path): never
        # an escape sequence or a line feed of theirs in our log.
        message = printable(message)
        line = "%s fcgiwatch[%d]: %s\n" % (
            time.strftime("%Y-%m-%d %H:%M:%S"), self.pid, message)
        data = line.encode("utf-8", "replace")
        if self.foreground:
            try:
                os.write(2, data)
            except OSError:
                pass
        if self.own_log is not None:
            self.own_log.write(data)
        if self.rpc is not None and self.rpc.main_followers:
            for connection in list(self.rpc.main_followers):
                connection.feed(None, data, "main")  # maintail -f
        if self.syslog is not None and self.settings.syslog:
            self.syslog.send(severity, "fcgiwatch", self.pid,
                             message.encode("utf-8", "replace"))

    def warn(self, message):
        self.log(message, LOG_WARNING)

    def open_logging(self):
        settings = self.settings
        if self.own_log is not None:
            self.own_log.close()
            self.own_log = None
        if settings.log_file:
            self.own_log = LogFile(settings.log_file, 0, 0, self.warn,
                                   self.euid)
            self.own_log.open()
        old = self.syslog
        if old is not None and (old.target, old.facility) == (
                settings.syslog_socket, settings.syslog_facility):
            return
        # One sender for our events and for child output sent to syslog.
        self.syslog = SyslogSender(settings.syslog_socket,
                                   settings.syslog_facility, self.warn)
        self.syslog.on_backlog = self.outputs.on_syslog_backlog
        if old is not None:
            if old.sock is not None:
                self.unwatch(old.sock.fileno())
            old.close()
            # Pipes paused on the old sender's backlog read again.
            self.syslog.waiters = old.waiters
            self.outputs.on_syslog_backlog(False)

    # -- start-up --------------------------------------------------------

    def start(self):
        """Everything before the loop.  Raises Failure (exit 1) before any
        service has started; nothing is left behind when it does."""
        fill_standard_fds()
        close_on_exec_inherited()
        for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
            # Were we socket-activated ourselves: none of that for helpers.
            os.environ.pop(name, None)
        self.devnull = os.open(os.devnull, os.O_RDWR)
        self.home_fd = open_home()
        self.disk.make()
        self.disk.take_lock()
        self.selector = DefaultSelector()
        self.open_logging()
        self.log("started: pid %d, config %s, %d services" % (
            self.pid, self.settings.filename, len(self.config.services)))
        for warning in self.config.warnings:
            self.warn("config: %s" % warning)
        if self.disk.lock_warning:
            self.warn(self.disk.lock_warning)
        self.raise_limits()  # before the sockets and pipes it counts
        self.control = ControlServer(self)
        if self.settings.rpc is not None:
            self.rpc = RpcServer(self)
        self.setup_signals()
        self.tree.start()
        for config in self.config.services:
            self.services[config.name] = Service(self, config)
        self.orders.load()
        self.orders.prune(self.services)
        self.deps.index()
        adopt = self.leftovers.handle()
        self.open_listeners()
        release_free_memory()  # before the first fork
        self.disk.write_pidfile()
        now = self.clock()
        for service in self.services.values():
            if service.name in adopt:
                entry, pidfd = adopt[service.name]
                self.leftovers.take_over(service, entry, pidfd, now)
            elif self.orders.wanted_up(service.config):
                service.on_want_up(now)
        self.disk.write_status()
        self.settle_heap()

    def settle_heap(self):
        """After start-up, a reload or a hand-over: move what exists now
        (thousands of services' objects) out of the cyclic collector's way
        (gc.freeze, Python 3.7+), so that a collection during a restart
        walks only what is new, not every service."""
        import gc
        if hasattr(gc, "freeze"):
            gc.collect()
            gc.freeze()

    def raise_limits(self):
        """Open files: at least what the config needs (fds_needed), or
        minfds where that is more, up to the hard limit (which root raises
        too); processes: [supervisord] minprocs.  The services inherit
        both, as under supervisord.  Done at start and at each reload."""
        import resource
        nofile = max(self.settings.minfds or 0, fds_needed(self.config))
        for value, limit, key in (
                (nofile, resource.RLIMIT_NOFILE, "minfds"),
                (self.settings.minprocs, resource.RLIMIT_NPROC,
                 "minprocs")):
            if not value:
                continue
            soft, hard = resource.getrlimit(limit)
            if soft == resource.RLIM_INFINITY or soft >= value:
                continue
            if hard != resource.RLIM_INFINITY and hard < value and \
                    self.euid != 0:
                self.warn("%s: %d needed, but the hard limit is %d and only "
                          "root may raise it; running with %d (raise it "
                          "with ulimit -Hn as root before starting "
                          "fcgiwatch)" % (key, value, hard, hard))
                value = hard
            if value <= soft:
                continue
            try:
                resource.setrlimit(limit, (value, max(value, hard) if hard
                                           != resource.RLIM_INFINITY
                                           else hard))
            except (ValueError, OSError) as exc:
                self.warn("%s = %d: cannot raise the limit: %s" % (
                    key, value, exc))
            else:
                self.log("%s: raised the soft limit from %d to %d" % (
                    "open files" if key == "minfds" else "processes",
                    soft, value))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self.outputs.fd_budget = None if soft == resource.RLIM_INFINITY \
            else soft - FDS_OWN

    def notify_socket(self, service):
        """The path of a service's NOTIFY_SOCKET, bound on first use (and
        again for a new user).  Raises Failure."""
        config = service.config
        owner = None
        if self.euid == 0 and config.uid not in (None, 0):
            owner = (config.uid, config.gid)
        notify = self.notify.get(service.name)
        if notify is None or notify.owner != owner:
            if notify is not None:
                notify.close()
            notify = self.notify[service.name] = NotifySocket(
                self, service.name, owner)
        return notify.path

    def close_notify_socket(self, name):
        notify = self.notify.pop(name, None)
        if notify is not None:
            notify.close()

    def setup_signals(self):
        self.wakeup_read, self.wakeup_write = os.pipe()
        os.set_blocking(self.wakeup_read, False)
        os.set_blocking(self.wakeup_write, False)
        self.selector.register(self.wakeup_read, EVENT_READ,
                               self.on_wakeup)
        signal.set_wakeup_fd(self.wakeup_write)
        for number in HANDLED_SIGNALS:
            signal.signal(number, self.on_signal)
        self.reset_signals = non_default_signals()

    def on_signal(self, number, _frame):
        # Only note it: the loop acts on it (set_wakeup_fd woke it up).
        self.pending_signals.append(number)

    def on_wakeup(self, _mask):
        try:
            while os.read(self.wakeup_read, 512):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    # -- the loop ----------------------------------------------------------

    def run(self):
        """The one loop; returns the exit code."""
        while True:
            code = self.turn()
            if code is not None:
                return code

    def turn(self, wait=None):
        """One turn of the loop: act on signals, due deadlines and control
        requests, write the status file, then wait in select() for the next
        event or deadline.  wait caps that wait in real seconds: for tests
        that step a clock of their own (clock=) and must not sleep through
        a deadline of that clock.  Returns the exit code once stopped."""
        self.spawned = 0
        self.guarded(self.process_signals)
        now = self.clock()
        if self.start_queue:
            self.guarded(self.start_queued)
        if self.tree.scan_due is not None:
            self.guarded(self.tree.scan_if_due, now)
        for service in self.due_services(now):
            self.guarded(service.on_due, now)
        if self.deps.jobs:
            self.guarded(self.deps.advance, now)
        if self.shutting_down:
            self.guarded(self.advance_shutdown, now)
        if self.rolls.underway:
            self.guarded(self.rolls.advance, now)
        if self.alerts.running:
            self.guarded(self.alerts.check, now)
        self.guarded(self.control.check, now)
        if self.rpc is not None:
            self.guarded(self.rpc.check, now)
        if self.status_dirty and now >= self.disk.next_write():
            self.disk.write_status()
        if self.exit_code is not None:
            return self.finish()
        timeout = self.next_timeout(self.clock())
        if wait is not None:
            timeout = wait if timeout is None else min(timeout, wait)
        for key, mask in self.selector.select(timeout):
            self.guarded(key.data, mask)
        return None

    def guarded(self, function, *args):
        """Run one step of the loop; a bug in it is logged, never fatal:
        this is the process that keeps every service alive."""
        try:
            function(*args)
        except Exception as exc:
            # Where it happened, without importing anything: out of file
            # descriptors, an import would fail here too.
            trace = exc.__traceback__
            while trace.tb_next is not None:
                trace = trace.tb_next
            self.log("internal error, carrying on: %s: %s (line %d, in %s)"
                     % (type(exc).__name__, exc, trace.tb_lineno,
                        trace.tb_frame.f_code.co_name), LOG_ERR)

    def next_timeout(self, now):
        """Seconds until the earliest deadline, or None: sleep for good."""
        times = [self.earliest_due(), self.tree.scan_due]
        times.extend(self.control.deadlines())
        if self.rpc is not None:
            times.extend(self.rpc.deadlines())
        if self.shutting_down:
            times.append(self.tree.deadline())
        times.append(self.alerts.deadline())
        if self.status_dirty:
            times.append(self.disk.next_write())
        times = [t for t in times if t is not None]
        if self.pending_signals or self.start_queue:
            return 0
        return max(0.0, min(times) - now) if times else None

    # -- bursts of starts ---------------------------------------------------

    def may_spawn(self, service, cause):
        """May a start be made now?  SPAWN_SLICE a turn; past that it waits
        in start_queue, with the line about what led to it."""
        if self.spawned < SPAWN_SLICE:
            self.spawned += 1
            return True
        service.queued_cause = cause
        self.start_queue.append(service)
        return False

    def start_queued(self):
        """Make the starts that waited, a slice at a time, each at its own
        time."""
        while self.start_queue and self.spawned < SPAWN_SLICE:
            service = self.start_queue.popleft()
            if self.services.get(service.name) is service and \
                    service.state == STARTING and service.run is None and \
                    service.want == "up":
                service.spawn(self.clock(), service.queued_cause)

    # -- what is due: a heap, not a walk over every service ---------------
    #
    # Each wake-up looks at what is due, not at every service: at
    # thousands of services that walk was most of a busy loop's time.
    # Whatever may make a service due sooner (a timer set, a run's due
    # time, a state change) touches it (Service.touch); touched services
    # go into the heap with their next_wake() before the heap is looked
    # at.  An entry that is out of date (the time moved, the service is
    # gone) is checked and dropped when it comes up.

    def schedule(self):
        for service in self.touched:
            when = service.next_wake()
            if when is not None:
                self.pushed += 1
                heapq.heappush(self.due, (when, self.pushed, service))
        self.touched.clear()

    def due_services(self, now):
        """The services with something due by now, each once."""
        self.schedule()
        found = []
        while self.due and self.due[0][0] <= now:
            _when, _number, service = heapq.heappop(self.due)
            if service in found or \
                    self.services.get(service.name) is not service:
                continue
            wake = service.next_wake()
            if wake is not None and wake <= now:
                found.append(service)
            elif wake is not None:
                self.touched.add(service)  # later than it was: again
        self.schedule()
        return found

    def earliest_due(self):
        """The earliest time a service needs the loop, or None."""
        self.schedule()
        while self.due:
            when, _number, service = self.due[0]
            if self.services.get(service.name) is service and \
                    service.next_wake() == when:
                return when
            heapq.heappop(self.due)
            if self.services.get(service.name) is service:
                self.touched.add(service)
                self.schedule()
        return None

    def process_signals(self):
        while self.pending_signals:
            # Take the list and leave a new one for the handler: a signal
            # that arrives while we copy lands in the new list, never in one
            # we then empty (copying, then deleting, lost it).
            taken, self.pending_signals = self.pending_signals, []
            numbers = set(taken)
            if signal.SIGCHLD in numbers:
                self.reap()
            if numbers & set((signal.SIGTERM, signal.SIGINT)):
                self.begin_shutdown("signal %s" % "/".join(
                    signal_name(n) for n in sorted(numbers) if n in (
                        signal.SIGTERM, signal.SIGINT)))
            if signal.SIGHUP in numbers:
                self.reload("SIGHUP")
            if signal.SIGUSR1 in numbers:
                self.reopen_logs()
            if signal.SIGUSR2 in numbers and not self.shutting_down:
                self.handover.begin("SIGUSR2")

    def reap(self):
        """Reap every exited child (several exits can share one SIGCHLD),
        take in the orphans they left, then act on each exit."""
        now = self.clock()
        exits = []
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            if pid == 0:
                break
            exits.append((pid, status))
        if not exits:
            return
        tree = self.tree
        ended = [self.children[pid] for pid, _ in exits
                 if pid in self.children]
        # The orphans the exits left: for a run being stopped, taken in
        # first, so that its stop waits for them; for the others a moment
        # after the exits are acted on, off the restart path (the scan
        # reads the list of our children, thousands long, and on a small
        # machine the new run would wait for the CPU meanwhile): the
        # orphans of a run that is over are killed as they are taken in
        # (Tree.take_in), and an adoption looks for its daemon itself
        # (Tree.adopt).
        early = any(run.stopping for run in ended)
        if early:
            tree.scan(now, ended)
        touched = []
        for pid, status in exits:
            run = self.children.pop(pid, None)
            if run is not None:
                run.service.on_exited(run, status, now)
            elif pid in self.helpers:
                self.helpers.pop(pid)(status)
            else:
                run = tree.reaped(pid)
                if run is not None:
                    touched.append(run)
                elif not tree.subreaper:
                    self.log("reaped pid %d, not a service of ours (%s)" % (
                        pid, decode_wait_status(status)[2]))
        if not early:
            tree.scan_soon(now, ended)
        for run in touched:
            run.service.on_tree_changed(now, run)
        tree.report()

    # -- fds in the selector -----------------------------------------------

    def service_ready(self, service, renewed=False):
        """A service's serving run became ready (Service.judge_ready): the
        one event that waits on readiness hang on (renewed: a new run of a
        service that was ready before)."""
        self.status_dirty = True
        now = self.clock()
        for listener in list(self.ready_listeners):
            listener(service, now)
        self.deps.on_ready(service, now, renewed)

    def run_uid(self, config):
        """The uid a service's processes run as."""
        return self.euid if config.uid is None else config.uid

    def watch(self, fd, events, callback):
        try:
            self.selector.register(fd, events, callback)
        except KeyError:
            self.selector.modify(fd, events, callback)

    def unwatch(self, fd):
        try:
            self.selector.unregister(fd)
        except (KeyError, ValueError):
            pass

    # -- child output ------------------------------------------------------

    def reopen_logs(self):
        """SIGUSR1: logrotate renamed our files; open fresh ones."""
        self.outputs.reopen()
        if self.own_log is not None:
            self.own_log.reopen()
        self.log("reopened log files")

    # -- held listening sockets --------------------------------------------

    def open_listeners(self):
        """Bind every service's socket before the first start.  The socket
        is kept while its key is unchanged, so clients queue in the backlog
        across restarts and reloads instead of being refused.  One that
        cannot be bound (a port in use) holds back only its own service:
        each start of it tries again (Service.listen), backing off."""
        for service in self.services.values():
            if service.config.socket is not None:
                try:
                    service.listen()
                except Failure as exc:
                    self.warn("%s: %s; it starts once it can" % (
                        service.name, exc))

    def release_listeners(self, service):
        """Close a service's copies of its held sockets; a unix socket's
        file goes with the last copy (a pool's instances share them)."""
        socks, service.listeners = service.listeners, []
        key = socket_key(service.config)
        shared = any(other.listeners and socket_key(other.config) == key
                     for other in self.services.values())
        for endpoint in service.config.socket or ():
            if not shared and endpoint.family == socket.AF_UNIX:
                remove_socket_file(endpoint.address, self.euid)
        for sock in socks:
            sock.close()

    def shared_listeners(self, config, exclude=()):
        """Copies (dup) of the held sockets that another instance of the
        same program holds, or None."""
        key = socket_key(config)
        for other in self.services.values():
            if other.listeners and other.name not in exclude \
                    and other.config.program == config.program and \
                    socket_key(other.config) == key:
                return [sock.dup() for sock in other.listeners]
        return None

    # -- status ------------------------------------------------------------

    def status_document(self):
        now, wall = self.clock(), time.time()
        return {
            "supervisor": {
                "pid": self.pid, "uptime": round(now - self.started, 3),
                "config": self.settings.filename, "version": VERSION,
                "started": round(self.started_wall, 3),
                "written": round(wall, 3), "euid": self.euid,
                "state_dir": self.settings.state_dir,
                "start_time": process_start_time(self.pid),
                "generation": self.generation,
                "groups": [[g, list(m)] for g, m in self.config.groups],
                "stopped": self.exit_code is not None},
            "services": [status_entry(s, now, wall)
                         for s in self.services.values()],
        }

    # -- reload --------------------------------------------------------------

    def reload(self, cause):
        """Re-read the config.  Returns (exit code, lines, waits).

        An invalid file changes nothing.  Otherwise removed services stop,
        new ones start, changed ones restart, the others keep their pid.
        """
        filename = self.settings.filename
        try:
            config = load_config(filename, self.euid)
        except ConfigErrors as exc:
            for line in exc.lines():
                self.log("reload (%s) refused, nothing changed: %s" % (
                    cause, line[len("fcgiwatch: "):]), LOG_ERR)
            return EXIT_USAGE, exc.lines(), []
        for warning in config.warnings:
            self.warn("config: %s" % warning)
        code, lines, waits = self.apply(config, "reload (%s)" % cause)
        return code, ["fcgiwatch: warning: %s" % w
                      for w in config.warnings] + lines, waits

    def apply(self, config, cause):
        """Move from the running config to this one, as reload does.
        Returns (exit code, lines, waits).  New sockets are bound first:
        if one cannot be, nothing changes."""
        settings = config.globals
        lines, waits = [], []
        if settings.state_dir != self.settings.state_dir:
            lines.append("fcgiwatch: state_dir stays %s until fcgiwatch "
                         "restarts" % self.settings.state_dir)
            settings = settings._replace(state_dir=self.settings.state_dir)
        added, removed, changed, updated, unchanged = diff_configs(
            self.config.services, config.services)
        new_by_name = dict((s.name, s) for s in config.services)
        opened = self.open_new_sockets(added + changed, new_by_name, lines)
        self.config = config._replace(globals=settings)
        if settings != self.settings:
            if settings.data_dir != self.settings.data_dir:
                self.orders.directory = settings.data_dir
                lines.append("fcgiwatch: standing orders now in %s"
                             % settings.data_dir)
                self.orders.save()
            rpc_changed = settings.rpc != self.settings.rpc
            self.settings = settings
            self.open_logging()
            if rpc_changed:
                self.listen_rpc(lines)
        self.raise_limits()  # for the services it adds
        now = self.clock()

        def note(line, wait=None):
            lines.append(line)
            if wait is not None:
                waits.append(wait)
        for name in removed:
            self.remove_service(self.services[name], note)
        # What depends on a removed service goes first (with it, or the
        # config would not have been read).
        self.deps.stop([self.services[name] for name in removed], "removed",
                       now)
        for name in updated:
            self.services[name].apply_config(new_by_name[name], now)
            note("%s: updated without a restart" % name)
        rolled = []
        for name in changed:
            if self.change_service(self.services[name], new_by_name[name],
                                   opened.pop(name, None), now, note):
                rolled.append(self.services[name])
        self.rolls.restart(rolled, now)
        for name in unchanged:
            service = self.services[name]
            pid = " (pid %d)" % service.pid if service.pid else ""
            note("%s: unchanged%s" % (name, pid))
        for name in added:
            self.add_service(new_by_name[name], opened.pop(name, None), now,
                             note)
        self.order_services()
        self.orders.prune(set(s.name for s in config.services))
        self.deps.index()  # a wait a dependency that is gone ended starts
        self.settle_heap()
        self.log("%s: %d added, %d removed, %d changed, "
                 "%d updated, %d unchanged" % (
                     cause, len(added), len(removed), len(changed),
                     len(updated), len(unchanged)))
        self.status_dirty = True
        return EXIT_OK, lines, waits

    def listen_rpc(self, lines):
        """[unix_http_server] or [inet_http_server] changed in a reload:
        listen anew; the clients connected stay."""
        kept, api, followers = [], None, []
        if self.rpc is not None:
            kept, self.rpc.connections = self.rpc.connections, []
            api = self.rpc.api  # a reread's state, for the update under way
            followers = self.rpc.main_followers
            self.rpc.close()
            self.rpc = None
        if self.settings.rpc is None:
            for connection in kept:
                connection.close()
            return
        try:
            self.rpc = RpcServer(self)
        except Failure as exc:
            self.warn("%s; supervisorctl cannot reach us" % exc)
            lines.append("fcgiwatch: warning: %s; supervisorctl cannot "
                         "reach us" % exc)
            for connection in kept:
                connection.close()
            return
        for connection in kept:
            connection.server = self.rpc
        self.rpc.connections = kept
        self.rpc.main_followers = followers
        if api is not None:
            api.server, self.rpc.api = self.rpc, api

    def open_new_sockets(self, names, new_by_name, lines):
        """{name: listening socket} for each service whose socket is new or
        changed.  One that cannot be bound now is left out, with a line
        saying so: that service tries again at each start."""
        opened, fresh = {}, {}
        for name in names:
            new = new_by_name[name]
            old = self.services[name].config if name in self.services \
                else None
            if new.socket is None or socket_key(new) == socket_key(old):
                continue
            key = socket_key(new)
            # A pool's instances share their sockets: those opened in this
            # reload, else those an unchanged instance holds.
            if key in fresh:
                if fresh[key] is not None:
                    opened[name] = [sock.dup() for sock in fresh[key]]
                continue
            try:
                opened[name] = self.shared_listeners(
                    new, exclude=names) or open_listeners(new, self.euid)
            except Failure as exc:
                fresh[key] = None
                self.warn("%s: %s; it starts once it can" % (name, exc))
                lines.append("fcgiwatch: warning: %s: %s; it starts once "
                             "it can" % (name, exc))
                continue
            fresh[key] = opened[name]
        return opened

    def remove_service(self, service, note):
        """Mark it to go; the caller stops it (Dependencies.stop)."""
        service.removing = True
        if service.state in RUNNING_STATES:
            # Told again, as "removed", once it is gone.
            note("%s: removed, stopping" % service.name,
                 (service.name, "gone", service.spawns))
        else:
            note("%s: removed" % service.name)

    def change_service(self, service, new, listeners, now, note):
        """A process key changed: give it the new config, to take at its
        restart (True: it runs, and the caller restarts it), or start it,
        or keep it down, as it was wanted."""
        name = service.name
        if socket_key(service.config) != socket_key(new):
            # The running process keeps its own copy as fd 0; the next run
            # gets the new socket (or /dev/null without one).
            if service.listeners:
                self.release_listeners(service)
            service.listeners = listeners or []
        service.pending_config = new
        if service.state in RUNNING_STATES:
            note("%s: changed, restarting" % name, (name, "up",
                                                    service.spawns))
            return True  # the caller restarts it (a pool's roll)
        elif service.want == "up":
            note("%s: changed, starting" % name, (name, "up",
                                                  service.spawns))
            service.on_want_up(now)
        else:
            service.apply_config(service.pending_config, now)
            note("%s: changed, stays down" % name)

    def add_service(self, config, listeners, now, note):
        service = Service(self, config)
        service.listeners = listeners or []
        self.services[config.name] = service
        if self.orders.wanted_up(config):
            note("%s: added, starting" % config.name, (config.name, "up", 0))
            service.on_want_up(now)
        else:
            note("%s: added, not started (autostart = false)" % config.name)

    def order_services(self):
        ordered = sorted(self.services.values(),
                         key=lambda s: (s.config.priority, s.name))
        self.services = dict((s.name, s) for s in ordered)

    def forget(self, service):
        """A removed service is down: drop it and what it held."""
        if self.services.get(service.name) is service:
            del self.services[service.name]
        service.close_outputs()
        if service.listeners:
            self.release_listeners(service)
        self.close_notify_socket(service.name)
        self.status_dirty = True

    # -- shutdown ----------------------------------------------------------

    def begin_shutdown(self, cause):
        if self.shutting_down:
            self.log("already shutting down (%s)" % cause)
            return
        self.shutting_down = True
        self.log("shutting down (%s)" % cause)
        # In waves: what depends on others first, then by descending
        # priority.  Stops under way become part of this one.
        self.deps.jobs = []
        self.deps.stop(list(self.services.values()), "shutdown",
                       self.clock())

    def advance_shutdown(self, now):
        """Once the last wave is down, and the leftovers gone: exit."""
        if self.deps.jobs:
            return
        if not any(s.state in RUNNING_STATES or s.retiring
                   for s in self.services.values()) \
                and not self.tree.stop_leftovers(now):
            self.exit_code = EXIT_OK

    def finish(self):
        """Leave nothing behind but the status file saying we stopped."""
        self.log("stopped: every service is down")
        self.disk.remove_pidfile()
        self.outputs.compressions.stop()
        for pid in list(self.alerts.running):
            try:
                os.killpg(pid, signal.SIGKILL)  # not left behind us
            except (ProcessLookupError, PermissionError):
                pass
        self.disk.write_status()
        self.control.finish_all("fcgiwatch: stopped (pid %d)" % self.pid)
        self.close_everything()
        return self.exit_code

    def close_everything(self):
        for service in self.services.values():
            service.close_outputs()
            if service.listeners:
                self.release_listeners(service)
        if self.control is not None:
            self.control.close()
            self.control = None
        if self.rpc is not None:
            self.rpc.close()
            self.rpc = None
        for name in list(self.notify):
            self.close_notify_socket(name)
        try:
            signal.set_wakeup_fd(-1)
        except ValueError:
            pass
        if self.syslog is not None:
            self.syslog.close()
        if self.own_log is not None:
            self.own_log.close()
        self.disk.close()


# ===========================================================================
# Leftovers of a supervisor that died
#
# A supervisor killed with SIGKILL (or by the OOM killer) leaves its runs
# in their own sessions.  The next one on the same state_dir finds them in
# the last status file, names each by pid and /proc start time (never by pid
# alone: a pid is recycled, a pid with its start time is not), and takes it
# over through a pidfd or stops it, before anything starts.
# ===========================================================================

def open_pidfd(pid):
    """A pidfd for pid (Python 3.9+, Linux 5.3+), or None where there is
    none: then a leftover cannot be watched and is stopped instead."""
    opener = getattr(os, "pidfd_open", None)
    if opener is None:
        return None
    try:
        return opener(pid)
    except OSError:
        return None


def config_fingerprint(config):
    """A stable digest of the keys that shape a service's process: a
    leftover run is only taken over when it was started the same way."""
    import zlib
    shape = repr(tuple(getattr(config, k) for k in PROCESS_KEYS))
    return zlib.crc32(shape.encode("utf-8", "replace")) & 0xffffffff


def find_by_environment(state_dir, own_pid, known, trusted):
    """Processes that carry state_dir in their environment (every run of
    ours does: service_identity) and are not in known (the status file's
    entries, with their trees): leftovers of a supervisor that died, found
    without its status file.  As status-file-like entries, each signalled
    alone ("alone") and never taken over: nothing says how it was started.
    Any process may carry any variable: one counts only when
    trusted(service name, uid) says its user is one a run of that name
    ran as, so no stranger can make us wait for it, or signal it."""
    needle = STATE_DIR_VARIABLE + b"=" + state_dir.encode("utf-8",
                                                          "replace")
    covered = set()
    for entry in known:
        if is_same_process(entry.get("pid"), entry.get("start_time")):
            covered.update((entry["pid"], entry.get("pgid")))
    covered.discard(None)

    def in_known_tree(pid):
        # A descendant of a known run (its workers, one that called setsid
        # under a run we take over) is that run's business.
        for _hop in range(64):
            info = read_proc_stat(pid)
            try:
                pid = int(info[1][1])
            except (TypeError, IndexError, ValueError):
                return False
            if pid in covered:
                return True
            if pid <= 1 or pid == own_pid:
                return False
        return False
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == own_pid:
            continue
        pid = int(name)
        try:
            with open("/proc/%d/environ" % pid, "rb") as handle:
                items = handle.read().split(b"\0")
        except OSError:
            continue  # gone, or not ours to read (not ours to stop either)
        if needle not in items:
            continue
        ids = process_ids(pid)
        if ids is None or ids[0] == "Z" or ids[1] in covered or \
                ids[2] in covered or in_known_tree(pid):
            continue
        service = [item[len(SERVICE_VARIABLE) + 1:] for item in items
                   if item.startswith(SERVICE_VARIABLE + b"=")]
        name = service[0].decode("utf-8", "replace") if service else "?"
        if not trusted(name, process_uid(pid)):
            continue
        found.append({"name": printable(name), "pid": pid,
                      "start_time": process_start_time(pid),
                      "pgid": ids[1], "alone": True, "want": "down"})
    return found


class Leftovers:
    """What the last supervisor on this state_dir left running."""

    def __init__(self, supervisor):
        self.supervisor = supervisor

    def handle(self):
        """Sort the leftovers: a run is taken over when its pidfd can watch
        it, its service still exists with the same process keys, and it
        holds no socket of ours (a socket we cannot get back); every other
        leftover is stopped (stop signal, stopwaitsecs, KILL) now.
        Returns {name: (status entry, pidfd)} to take over."""
        supervisor = self.supervisor
        state_dir = supervisor.settings.state_dir
        previous, problem = read_status(state_dir)
        if problem not in (None, "missing", "stale"):
            supervisor.warn("%s is unreadable (%s); looking for what the "
                            "last supervisor left running by its processes' "
                            "environment instead" % (os.path.join(
                                state_dir, STATUS_FILE), problem))
        entries = previous["services"] if previous else []
        if previous is None or problem == "stale" or \
                not previous["supervisor"].get("stopped"):
            # It died (or its file says too little): what it started
            # carries our state_dir in its environment, the file or not.
            entries = entries + find_by_environment(
                state_dir, supervisor.pid, entries, self.trusted(entries))
        adopt, stop = {}, []
        for entry in entries:
            if not is_same_process(entry.get("pid"), entry.get("start_time")):
                continue
            service = supervisor.services.get(entry["name"])
            if service is not None and service.config.socket is None and \
                    entry.get("fingerprint") == config_fingerprint(
                        service.config) and entry.get("want") == "up":
                pidfd = open_pidfd(entry["pid"])
                # The pidfd names the process for good: check it was not
                # recycled between the start-time check and pidfd_open.
                if pidfd is not None and is_same_process(
                        entry["pid"], entry["start_time"]):
                    adopt[entry["name"]] = (entry, pidfd)
                    continue
                if pidfd is not None:
                    os.close(pidfd)
            stop.append((entry, service))
        self.stop(stop)
        return adopt

    def trusted(self, entries):
        """trusted(name, uid) for find_by_environment: root's and our own
        processes, and those of the user that service name runs as, now or
        (as the last status file says) under the supervisor that died."""
        supervisor = self.supervisor
        users = {}
        for entry in entries:
            if isinstance(entry.get("uid"), int):
                users.setdefault(entry["name"], set()).add(entry["uid"])
        for name, service in supervisor.services.items():
            users.setdefault(name, set()).add(supervisor.run_uid(
                service.config))

        def trusted(name, uid):
            return uid in (0, supervisor.euid) or uid in users.get(name, ())
        return trusted

    def take_over(self, service, entry, pidfd, now):
        """A run a killed supervisor left: -> UP (STARTING until a probe
        passes) with its pid, watched through its pidfd."""
        wall = time.time()
        ran = max(0.0, wall - entry.get("since", wall))
        run = Run(service, entry["pid"], now - ran)
        run.pgid = entry.get("pgid") or 0
        run.start_time = entry["start_time"]
        run.started_wall = wall - ran
        run.become_ready(now, service.config)
        service.watch_pidfd(run, pidfd)
        service.run = run
        service.spawns = run.number = 1
        service.restarts = entry.get("restarts", 0)
        service.last_exit = entry.get("last_exit")
        service.want = "up"
        if service.config.healthcheck:
            service.health = "unknown"
        service.change_state(STARTING, "", "taken over: pid %d, left "
                             "running by a supervisor that died; its exit "
                             "code will be unknown" % run.pid)
        service.judge_ready(now, None)
        service.since, service.since_wall = now - ran, wall - ran

    def stop(self, leftovers):
        """Stop leftover runs we will not take over, and wait: this happens
        before any service starts, so blocking here delays nothing."""
        if not leftovers:
            return
        supervisor = self.supervisor
        deadline = supervisor.clock()
        for entry, service in leftovers:
            number = service.config.stopsignal if service else signal.SIGTERM
            wait = service.config.stopwaitsecs if service else 10.0
            deadline = max(deadline, supervisor.clock() + wait)
            supervisor.log("%s: stopping pid %d, left running by a "
                           "supervisor that died" % (entry["name"],
                                                     entry["pid"]),
                           LOG_WARNING)
            self.signal(entry, number)

        def alive():
            return [(e, s) for e, s in leftovers
                    if is_same_process(e["pid"], e["start_time"])]
        for final in (False, True):
            while alive() and supervisor.clock() < deadline:
                time.sleep(GROUP_POLL)
            if final or not alive():
                break
            for entry, _service in alive():
                supervisor.log("%s: leftover pid %d did not stop; sent KILL"
                               % (entry["name"], entry["pid"]), LOG_WARNING)
                self.signal(entry, signal.SIGKILL)
            deadline = supervisor.clock() + GROUP_KILL_GRACE
        for entry, _service in alive():
            supervisor.log("%s: leftover pid %d outlived KILL" % (
                entry["name"], entry["pid"]), LOG_ERR)

    def signal(self, entry, number):
        """Signal a leftover's group, and CONT after a stop signal, but only
        while its leader is verified: a group whose leader is gone may, long
        after, be a stranger's."""
        if not is_same_process(entry["pid"], entry["start_time"]):
            return
        numbers = (number,) if number in (signal.SIGKILL, signal.SIGCONT) \
            else (number, signal.SIGCONT)
        for sig in numbers:
            try:
                if entry.get("alone"):
                    os.kill(entry["pid"], sig)
                else:
                    os.killpg(entry.get("pgid") or entry["pid"], sig)
            except (ProcessLookupError, PermissionError):
                pass


# ===========================================================================
# Upgrade in place (--reexec)
#
# The running supervisor checks the file on disk with --check in a helper
# child, then execs it in this same process and hands over, in a file in
# state_dir, what the next program needs: every service's counters, its run
# (still our child, so still ours to reap), pipes and held sockets, kept by
# fd number across exec.  What is carried is listed once, below, for both
# snapshot() and restore().
# ===========================================================================

#: Service fields carried as they are.
CARRIED_SERVICE = ("state", "want", "why", "message", "fails", "spawns",
                   "restarts", "last_exit", "health", "health_fails",
                   "removing", "since_wall", "notify_status",
                   "pending_backoff", "troubled", "memory_over",
                   "ready_number", "replace_why")

#: Run fields carried as they are (for the current run, a replacement
#: starting beside it, and the runs being retired).
CARRIED_RUN = ("pid", "pgid", "start_time", "started_wall", "spawn_error",
               "phase", "pidfd", "session", "adopted", "orphans_seen",
               "exit_words", "number", "lingered", "said_stopping")

#: Monotonic times, carried as seconds from now (a service's timers too).
CARRIED_SERVICE_TIMES = ("since",)
CARRIED_RUN_TIMES = ("started_at", "due", "kill_at")


def run_snapshot(run, now):
    """A Run as JSON: its fields, its tree (JSON has no int keys and no
    sets) and its times as seconds from now."""
    if run is None:
        return None
    carried = dict((key, getattr(run, key)) for key in CARRIED_RUN)
    carried["members"] = sorted(run.members.items())
    carried["sessions"] = sorted(run.sessions)
    for key in CARRIED_RUN_TIMES:
        moment = getattr(run, key)
        carried[key] = None if moment is None else moment - now
    return carried


def run_restore(service, carried, now, fallback_due=None):
    """The Run of run_snapshot(), registered as our child (or watched
    through its pidfd) with its members.  fallback_due: when the run was
    carried by a version whose runs had no phase, the service's old
    deadline, which was the serving run's."""
    if carried is None:
        return None
    if "phase" not in carried:
        carried = phase_from_old_fields(carried, fallback_due)
    supervisor = service.supervisor
    run = Run(service, carried["pid"], now)
    run.session = carried["pgid"] or carried["pid"]
    for key in CARRIED_RUN:
        # A key the old program did not carry keeps its default.
        setattr(run, key, carried.get(key, getattr(run, key)))
    for key in CARRIED_RUN_TIMES:
        ahead = carried.get(key)
        setattr(run, key, None if ahead is None else now + ahead)
    run.members = dict((pid, pgid) for pid, pgid in
                       carried.get("members", ()))
    run.sessions = set(carried.get("sessions", (run.session,)))
    supervisor.tree.members.update((pid, run) for pid in run.members)
    if run.pidfd is not None:
        service.watch_pidfd(run, run.pidfd)
    elif run.pid:
        supervisor.children[run.pid] = run
    return run


def old_timers(entry):
    """A service's timers, from what fcgiwatch 1.0 carried over: its one
    deadline (a backoff's end, in BACKOFF; the serving run's otherwise)
    and a replacement's retry."""
    timers = {"replace": entry.get("replace_due")}
    if entry.get("state") == BACKOFF:
        timers["backoff"] = entry.get("deadline")
    return timers


def phase_from_old_fields(carried, fallback_due=None):
    """A run carried by fcgiwatch 1.0 (ready, stop_phase and five times of
    its own) in today's terms: a phase and one due time.

    >>> phase_from_old_fields({"ready": False, "stop_phase": "signalled",
    ...     "kill_at": 3.0, "poll_at": 0.02})["due"]
    0.02
    >>> phase_from_old_fields({"ready": False, "ready_at": None}, 1.5)[
    ...     "phase"], 1.5
    ('starting', 1.5)
    """
    carried = dict(carried)
    stop = carried.get("stop_phase")
    if stop:
        carried["phase"] = stop
        times = [carried.get("poll_at"), carried.get("kill_at")]
    elif carried.get("ready"):
        carried["phase"] = RUN_READY
        times = [carried.get("watchdog_at")]
    else:
        carried["phase"] = RUN_STARTING
        times = [carried.get("ready_at"), carried.get("ready_by"),
                 fallback_due]
    carried["due"] = next((t for t in times if t is not None), None)
    return carried


class Handover:
    """--reexec and SIGUSR2: check, snapshot, exec; and, in the new
    program, restore."""

    def __init__(self, supervisor):
        self.supervisor = supervisor
        self.running = False      # a --check helper is under way

    def begin(self, cause, done=None):
        """Check the file on disk with --check in a helper child (the loop
        goes on meanwhile), then exec it.  done(code, lines) is told the
        outcome before the exec."""
        supervisor = self.supervisor
        done = done or (lambda code, lines: None)
        if self.running:
            done(EXIT_FAIL, ["fcgiwatch: a re-exec is already under way"])
            return
        out_path = os.path.join(supervisor.settings.state_dir,
                                REEXEC_CHECK_FILE)
        helper = Helper(argv=(sys.executable, PROGRAM_PATH, "-c",
                              supervisor.settings.filename, "--check"),
                        env=tuple(os.environ.items()), directory="/",
                        umask=0o022, uid=None, gid=None, groups=())
        try:
            out_fd = os.open(out_path, os.O_WRONLY | os.O_CREAT
                             | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            try:
                pid, err_fd = spawn_child(helper, supervisor.devnull, out_fd,
                                          out_fd, supervisor.reset_signals)
            finally:
                os.close(out_fd)
            os.close(err_fd)
        except OSError as exc:
            done(EXIT_FAIL, ["fcgiwatch: re-exec refused: cannot run the "
                             "check: %s" % exc.strerror])
            return
        self.running = True
        supervisor.log("re-exec (%s): checking %s with --check"
                       % (cause, PROGRAM_PATH))
        supervisor.helpers[pid] = lambda status: self.after_check(
            status, out_path, cause, done)

    def after_check(self, status, out_path, cause, done):
        supervisor = self.supervisor
        self.running = False
        try:
            with open(out_path, "rb") as handle:
                output = handle.read().decode("utf-8", "replace")
            os.unlink(out_path)
        except OSError:
            output = ""
        if status != 0:
            last = [line for line in output.splitlines() if line.strip()]
            message = ("re-exec (%s) refused, still running the old program"
                       ": %s --check %s: %s" % (
                           cause, PROGRAM_PATH, decode_wait_status(status)[2],
                           last[-1].strip() if last else "no output"))
            supervisor.log(message, LOG_ERR)
            done(EXIT_FAIL, ["fcgiwatch: " + message])
            return
        if supervisor.shutting_down:
            done(EXIT_FAIL, ["fcgiwatch: shutting down; no re-exec"])
            return
        done(EXIT_OK, ["fcgiwatch: re-executing %s (pid %d)" % (
            PROGRAM_PATH, supervisor.pid)])
        self.exec_self(cause)

    def exec_self(self, cause):
        """Hand everything to a fresh copy of this file in this process."""
        import json
        supervisor = self.supervisor
        # Compressions are not carried: the next rotation does them again.
        supervisor.outputs.compressions.stop()
        state = self.snapshot()
        path = os.path.join(supervisor.settings.state_dir, REEXEC_FILE)
        disk = supervisor.disk
        keep = [disk.lock_fd]
        if disk.lock_sock is not None:
            keep.append(disk.lock_sock.fileno())
        for entry in state["services"]:
            keep.extend(fd for out in entry["outputs"] or ()
                        for fd in (out["read"], out["write"]))
            keep.extend(fd for fd, _family in entry["listeners"])
            if entry["run"] and entry["run"]["pidfd"] is not None:
                keep.append(entry["run"]["pidfd"])
        # Signals that arrive now stay pending across exec, for the new
        # program to handle once its handlers are in place.
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC
                         | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w") as handle:
                json.dump(state, handle)
            for fd in keep:
                os.set_inheritable(fd, True)
            argv, cwd = boot_command(["-c", supervisor.settings.filename,
                                      "--resume", path])
            supervisor.log("re-executing (%s): %s" % (cause, " ".join(argv)))
            boot_exec(argv, cwd)
        except OSError as exc:
            for fd in keep:
                os.set_inheritable(fd, False)
            supervisor.log("re-exec (%s) failed, still running the old "
                           "program: %s" % (cause, exc), LOG_ERR)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)

    def resume(self, state):
        """Carry on from snapshot() after --reexec: same pid, same children
        (still ours to reap), same pipes and sockets.  The services come
        back with the configs they ran under; then the file on disk is
        applied as a reload would."""
        supervisor = self.supervisor
        fill_standard_fds()
        close_on_exec_inherited()  # kept fds stay open, but not for children
        supervisor.devnull = os.open(os.devnull, os.O_RDWR)
        supervisor.home_fd = open_home()
        supervisor.disk.carry_on(state)
        supervisor.selector = DefaultSelector()
        supervisor.started_wall = state["started_wall"]
        supervisor.started = supervisor.clock() - (
            time.time() - supervisor.started_wall)
        supervisor.generation = state["generation"] + 1
        supervisor.open_logging()
        supervisor.control = ControlServer(supervisor)
        # supervisorctl's socket is bound anew (the old one closed at exec);
        # one that cannot be is a warning: the services carry on.
        supervisor.listen_rpc([])
        supervisor.setup_signals()
        supervisor.tree.start()  # still one (it survives exec): says so again
        new_config = supervisor.config
        now = supervisor.clock()
        for service in self.restore(state, now):
            supervisor.services[service.name] = service
        supervisor.config = new_config._replace(services=tuple(
            s.config for s in supervisor.services.values()))
        supervisor.order_services()
        # The runs carried over send to their service's socket's path (to
        # the shared one, if an older version started them).
        for service in supervisor.services.values():
            if service.config.ready != "notify":
                continue
            try:
                supervisor.notify_socket(service)
                if not state.get("notify_per_service") and \
                        None not in supervisor.notify:
                    supervisor.notify[None] = NotifySocket(supervisor)
            except Failure as exc:
                supervisor.warn(str(exc))
        release_free_memory()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)
        supervisor.reap()  # a child that ended during the exec sent no SIGCHLD
        supervisor.log("re-executed: version %s, %d services carried over" % (
            VERSION, len(supervisor.services)))
        supervisor.orders.load()
        supervisor.deps.jobs = [StopJob(why, waves) for why, waves in
                                state.get("stop_jobs", ())]
        supervisor.apply(new_config, "re-exec")
        supervisor.disk.write_status()

    def snapshot(self):
        """What the next program needs to carry on: every service's run,
        counters and deadlines, and the fds to keep (kept by number)."""
        supervisor = self.supervisor
        now = supervisor.clock()
        services = []
        for service in supervisor.services.values():
            for run in service.runs():
                service.close_exec_pipe(run)  # a run between fork and exec
            service.cancel_probe()  # the next program probes at once
            outputs = None
            if service.outputs is not None:
                outputs = [{"stream": pipe.stream, "read": pipe.read_fd,
                            "write": pipe.write_fd}
                           for pipe in service.outputs if pipe is not None]
                service.drain_output()
            entry = dict((key, getattr(service, key))
                         for key in CARRIED_SERVICE)
            entry["run"] = run_snapshot(service.run, now)
            entry["next_run"] = run_snapshot(service.next_run, now)
            entry["retiring"] = [run_snapshot(r, now)
                                 for r in service.retiring]
            entry["replace_failure"] = service.replace_failure
            entry["timers"] = dict((name, due - now) for name, due in
                                   service.timers.items())
            for key in CARRIED_SERVICE_TIMES:
                moment = getattr(service, key)
                entry[key] = None if moment is None else moment - now
            entry.update({
                "config": config_to_json(service.config),
                "pending_config": None if service.pending_config is None
                else config_to_json(service.pending_config),
                "outputs": outputs,
                "listeners": [[sock.fileno(), sock.family]
                              for sock in service.listeners]})
            services.append(entry)
        # Members of runs that are over are strays to the next program:
        # still ours, and stopped at shutdown.
        current = set(id(r) for s in supervisor.services.values()
                      for r in [s.run, s.next_run] + s.retiring)
        strays = set(supervisor.tree.strays)
        strays.update(pid for pid, run in supervisor.tree.members.items()
                      if id(run) not in current)
        return {"pid": supervisor.pid, "foreground": supervisor.foreground,
                "notify_per_service": True,
                "started_wall": supervisor.started_wall,
                "generation": supervisor.generation,
                "lock_fd": supervisor.disk.lock_fd, "services": services,
                "stop_jobs": [[job.why, job.waves]
                              for job in supervisor.deps.jobs],
                "lock_sock": None if supervisor.disk.lock_sock is None
                else supervisor.disk.lock_sock.fileno(),
                "strays": sorted(strays)}

    def restore(self, state, now):
        """The services of a snapshot, with their runs, pipes and sockets."""
        supervisor = self.supervisor
        services = []
        for entry in state["services"]:
            service = Service(supervisor, config_from_json(entry["config"]))
            for key in CARRIED_SERVICE:
                # A key the old program did not carry keeps its default.
                setattr(service, key, entry.get(key, getattr(service, key)))
            for key in CARRIED_SERVICE_TIMES:
                ahead = entry.get(key)
                setattr(service, key, None if ahead is None else now + ahead)
            timers = entry.get("timers")
            if timers is None:  # from 1.0: its deadlines by their old names
                timers = old_timers(entry)
            service.timers.update((name, now + ahead) for name, ahead in
                                  timers.items() if ahead is not None)
            old_deadline = entry.get("deadline")
            service.run = run_restore(service, entry["run"], now,
                                      old_deadline)
            service.next_run = run_restore(service, entry.get("next_run"),
                                           now)
            service.retiring = [run_restore(service, carried, now)
                                for carried in entry.get("retiring", ())]
            if entry.get("replace_failure"):
                service.replace_failure = tuple(entry["replace_failure"])
            if entry["pending_config"] is not None:
                service.pending_config = config_from_json(
                    entry["pending_config"])
            if entry["outputs"] is not None:
                service.outputs = supervisor.outputs.make(service, dict(
                    (out["stream"], (out["read"], out["write"]))
                    for out in entry["outputs"]))
            listeners = entry.get("listeners")
            if listeners is None:  # from 1.0: one, or none
                listeners = [entry["listener"]] if entry.get("listener") \
                    else []
            service.listeners = [socket.socket(family, socket.SOCK_STREAM,
                                               fileno=fd)
                                 for fd, family in listeners]
            # Every timer its state needs: a probe at once, the next look
            # at its memory (which 1.0 did not carry over).
            service.arm(now)
            if service.state == STARTING and service.run is None:
                supervisor.start_queue.append(service)  # still to start
            services.append(service)
        supervisor.tree.strays.update(state.get("strays", ()))
        return services


# ===========================================================================
# Status
#
# --status reads the status file the supervisor replaces atomically on every
# state change, and the lock, not a round trip: it answers at once, even
# while the supervisor is busy, and anyone may read it.
# ===========================================================================

def choose_services(names, rows, groups):
    """The service names that names pick, in order, each once.  rows:
    (service, program) for each service; groups: ((group, (program, ...)),
    ...).  A service's name picks it, a pool's program all its instances,
    a group (or GROUP:*) all of its programs', and GROUP:NAME the program
    or instance NAME in it, as supervisorctl writes them.  Raises
    UsageError naming what is unknown and what is known.

    >>> rows = [("web", "web"), ("q_0", "q"), ("q_1", "q")]
    >>> choose_services(["g:*", "q_1"], rows, (("g", ("web", "q")),))
    ['web', 'q_0', 'q_1']
    """
    services = [name for name, _program in rows]
    picks = dict((name, [name]) for name in services)
    programs = {}
    for name, program in rows:
        programs.setdefault(program, []).append(name)
    for program, instances in programs.items():
        picks.setdefault(program, instances)
    for group, members in groups:
        chosen = [n for p in members for n in programs.get(p, ())]
        picks.setdefault(group, chosen)
        picks.setdefault(group + ":*", chosen)
        for member in members:
            picks.setdefault(group + ":" + member, programs.get(member, []))
            for instance in programs.get(member, ()):
                picks.setdefault(group + ":" + instance, [instance])
    unknown = [n for n in names if n not in picks]
    if unknown:
        known = ["services " + ", ".join(services)] if services else []
        pools = sorted(p for p, i in programs.items() if i != [p])
        if pools:
            known.append("pools " + ", ".join(pools))
        if groups:
            known.append("groups " + ", ".join(g for g, _m in groups))
        raise UsageError("no such service: %s (known: %s)" % (
            ", ".join(unknown), "; ".join(known) or "none"))
    out = []
    for name in names:
        out.extend(n for n in picks[name] if n not in out)
    return out


def status_entry(service, now, wall):
    """What the status file (and --status --json) shows of a service."""
    config, run = service.config, service.run
    entry = {
        "name": service.name, "state": service.state,
        "pid": service.pid or None, "since": round(service.since_wall, 3),
        "seconds": round(max(0.0, now - service.since), 3),
        "restarts": service.restarts, "want": service.want,
        "last_exit": service.last_exit, "health": service.health,
        "message": service.message, "why": service.why,
        "logs": log_destinations(service),
        "pgid": (run.pgid or None) if run else None,
        "started": round(run.started_wall, 3) if run else None,
        "start_time": run.read_start_time() if run else None,
        "priority": config.priority,
        "fingerprint": service.fingerprint,
        "uid": service.supervisor.run_uid(config),
    }
    if config.numprocs > 1:
        entry.update(program=config.program,
                     process_num=config.process_num)
    elif config.program != service.name:
        entry["program"] = config.program
    if service.state == BACKOFF and "backoff" in service.timers:
        entry["retry_at"] = round(wall + service.timers["backoff"] - now, 3)
    if service.state == STOPPING and run is not None and \
            run.phase == RUN_SIGNALLED:
        entry["kill_at"] = round(wall + run.kill_at - now, 3)
    if config.healthcheck:
        entry["healthcheck"] = config.healthcheck.url
    if service.next_run is not None:
        entry["next_pid"] = service.next_run.pid or None
    if service.retiring:
        entry["retiring_pids"] = [r.pid for r in service.retiring if r.pid]
    if "replace" in service.timers:
        entry["replace_at"] = round(wall + service.timers["replace"] - now,
                                    3)
    if service.notify_status:
        entry["notify_status"] = service.notify_status
    if service.roll_note is not None:
        entry["pending"] = service.roll_note[1]
    supervisor = service.supervisor
    normally = supervisor.orders.normally(config)
    if normally:
        entry["normally"] = normally
        if service.state == DOWN and service.want == "down":
            entry["why"] = "stopped by request"
    if service.state == STARTING:
        # Starting normally is no failure (--status exit 0) until then;
        # waiting for its start (a burst's slice) has no bound.
        allowance = startup_allowance(config) if run is not None else None
        entry["starting_until"] = None if allowance is None else round(
            run.started_wall + allowance, 3)
    if service.waiting:
        blockers = supervisor.deps.blockers(service)
        entry["waiting_for"] = [other.name for other in blockers]
        entry["why"] = "waiting for " + supervisor.deps.describe_wait(service)
        if any(other.state != STARTING for other in blockers):
            # Waiting for what is not on its way up: no allowance.
            del entry["starting_until"]
    return entry


def log_destinations(service):
    """Where stdout and stderr go now: the config's words, or syslog
    where a log file could not be opened safely (and why)."""
    config = service.config
    logs = {"stdout": config.stdout_logfile,
            "stderr": config.stderr_logfile}
    sender = service.supervisor.syslog
    if sender is not None and sender.problem:
        for stream in ("stdout", "stderr"):
            if logs[stream] == "syslog":
                logs[stream] = fallback_path(service.supervisor.settings,
                                             service.name)
                logs[stream + "_problem"] = sender.problem
    for pipe in service.outputs or ():
        if pipe is not None and getattr(pipe.dest, "problem", None):
            streams = ["stdout", "stderr"] if pipe.stream == "stdout" \
                and service.outputs[1] is None else [pipe.stream]
            for stream in streams:
                if logs[stream] == pipe.dest.path:
                    logs[stream] = pipe.dest.describe()
                    logs[stream + "_problem"] = "%s %s" % (
                        pipe.dest.path, pipe.dest.problem)
    return logs


def format_status_line(entry, now):
    """One line a service, in daemontools' svstat style.

    >>> format_status_line({"name": "web", "state": "up", "pid": 7,
    ...     "since": 95.0, "restarts": 2, "want": "up", "health": "none",
    ...     "last_exit": {"code": None, "signal": "KILL"}}, 100.0)
    'web: up (pid 7) 5 seconds, restarts 2, last exit signal KILL'
    """
    state = entry["state"]
    seconds = int(max(0.0, now - entry["since"]))
    if entry.get("pid"):
        head = " (pid %d)" % entry["pid"]
    elif entry.get("why"):
        head = " (%s)" % entry["why"]
    else:
        head = ""
    parts = ["%s: %s%s %d seconds" % (entry["name"], state, head, seconds)]
    if state == BACKOFF and entry.get("retry_at") is not None:
        parts.append("retry in %d seconds" % max(0, math.ceil(
            entry["retry_at"] - now)))
    if state == STOPPING and entry.get("kill_at") is not None:
        parts.append("kill in %d seconds" % max(0, math.ceil(
            entry["kill_at"] - now)))
    if state in (DOWN, FATAL) and entry.get("want") == "up":
        parts.append("wanted up")
    if entry.get("next_pid"):
        parts.append("restarting: pid %d starting beside it"
                     % entry["next_pid"])
    if entry.get("retiring_pids"):
        parts.append("old run stopping (pid %s)" % ", ".join(
            "%d" % pid for pid in entry["retiring_pids"]))
    message = entry.get("message") or ""
    if state == UP and message.startswith("restart failed"):
        parts.append(message)
        if entry.get("replace_at") is not None:
            parts.append("next try in %d seconds" % max(0, math.ceil(
                entry["replace_at"] - now)))
    if entry.get("restarts"):
        parts.append("restarts %d" % entry["restarts"])
    last = entry.get("last_exit")
    if last and state in RUNNING_STATES:
        if last.get("signal"):
            parts.append("last exit signal %s" % last["signal"])
        elif last.get("code") is not None:
            parts.append("last exit code %d" % last["code"])
        else:
            parts.append("last exit unknown")
    health = entry.get("health", "none")
    if health != "none" and state in (STARTING, UP):
        parts.append("health %s" % health)
    if entry.get("notify_status"):
        parts.append("status: %s" % entry["notify_status"])
    if entry.get("pending"):
        parts.append("restart pending: %s" % entry["pending"])
    if entry.get("normally") and (entry["normally"] == "up") != (
            state in RUNNING_STATES):
        parts.append("normally %s" % entry["normally"])
    logs = entry.get("logs") or {}
    for stream in ("stdout", "stderr"):
        problem = logs.get(stream + "_problem")
        if problem and (stream == "stdout" or problem != logs.get(
                "stdout_problem")):
            parts.append("%s to %s: %s" % (stream, logs.get(stream, "?"),
                                           problem))
    message, why = entry.get("message"), entry.get("why") or ""
    if message and (state in (BACKOFF, FATAL, DOWN) or health == "failing") \
            and message != why and not message.startswith(why + " after"):
        parts.append(message)
    return printable(", ".join(parts))


def startup_allowance(config):
    """Seconds a run may take to be up and still be starting as it should:
    startsecs (the READY=1 deadline with ready = notify: none at all with
    startsecs = 0), and with a health check an interval and a timeout for
    the first probe that passes.  None: no bound."""
    if config.ready == "notify" and not config.startsecs:
        return None
    allowance = config.startsecs
    if config.healthcheck:
        allowance += config.healthcheck_interval + config.healthcheck_timeout
    return allowance


#: How late past its start-up allowance a starting service still counts
#: as on time in --status's exit code.
STARTING_GRACE = 1.0


def status_exit_code(entries, now):
    """0 when every service that should be up is up, or starting within its
    start-up allowance (starting_until, a Unix time); else 3.  The
    allowance has a second's grace: a busy supervisor may mark a service up
    a little after its startsecs, and that is not the service's fault.

    >>> status_exit_code([{"state": "starting", "want": "up",
    ...                    "starting_until": 10.0}], 10.5)
    0
    """
    for entry in entries:
        if entry.get("want") != "up" or entry["state"] == UP:
            continue
        if entry["state"] == STARTING and "starting_until" in entry and (
                entry["starting_until"] is None or
                now < entry["starting_until"] + STARTING_GRACE):
            continue
        return EXIT_NOT_UP
    return EXIT_OK


def supervisor_pid(state_dir):
    """The pid of the supervisor holding state_dir's lock, or None.  The
    pid file's flock says so without waking the supervisor; where the file
    is gone (state_dir removed), the lock socket says."""
    path = os.path.join(state_dir, LOCK_FILE)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return trusted_lock_holder(state_dir)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return read_pid(fd) or -1
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
    return trusted_lock_holder(state_dir)


def trusted_lock_holder(state_dir):
    """The pid of the supervisor behind state_dir's lock socket, or None
    (nobody, or a process of a user we do not believe)."""
    holder = lock_holder(state_dir)
    if holder is None or holder[1] not in trusted_uids(state_dir):
        return None
    return holder[0]


#: The fields of a status file's entries that readers rely on, and their
#: types: a file that does not match is unreadable, never a traceback.
NUMBER, MAYBE_INT = (int, float), (int, type(None))
STATUS_SUPERVISOR_TYPES = {
    "pid": int, "written": NUMBER, "started": NUMBER, "stopped": bool,
    "generation": int, "uptime": NUMBER, "euid": int, "groups": list,
    "start_time": MAYBE_INT, "version": str, "config": str}
STATUS_SERVICE_TYPES = {
    "name": str, "state": str, "since": NUMBER, "pid": MAYBE_INT,
    "restarts": int, "want": str, "health": str, "message": str,
    "why": str, "last_exit": (dict, type(None)), "logs": (dict, type(None)),
    "pgid": MAYBE_INT, "start_time": MAYBE_INT, "priority": int,
    "fingerprint": MAYBE_INT, "retry_at": (int, float, type(None)),
    "kill_at": (int, float, type(None)), "seconds": NUMBER,
    "next_pid": MAYBE_INT, "retiring_pids": list,
    "started": (int, float, type(None)),
    "replace_at": (int, float, type(None)), "notify_status": str,
    "program": str, "process_num": int, "uid": int, "pending": str,
    "starting_until": (int, float, type(None))}


def checked_status(doc):
    """doc if it has the shape of a status file, else None.

    >>> checked_status({"supervisor": {"pid": 1}, "services": [
    ...     {"name": "a", "state": "up", "since": 1.5}]}) is not None
    True
    >>> checked_status({"supervisor": {}, "services": [{"name": 1}]})
    """
    if not isinstance(doc, dict) or not isinstance(doc.get("supervisor"),
                                                   dict) or \
            not isinstance(doc.get("services"), list):
        return None

    def typed(values, types):
        return all(key not in values or isinstance(values[key], kinds)
                   for key, kinds in types.items())
    if not typed(doc["supervisor"], STATUS_SUPERVISOR_TYPES):
        return None
    for group in doc["supervisor"].get("groups") or ():
        if not (isinstance(group, list) and len(group) == 2 and isinstance(
                group[0], str) and isinstance(group[1], list) and all(
                    isinstance(member, str) for member in group[1])):
            return None
    for entry in doc["services"]:
        if not isinstance(entry, dict) or not all(
                key in entry for key in ("name", "state", "since")) or \
                entry["state"] not in STATES or \
                not typed(entry, STATUS_SERVICE_TYPES):
            return None
        last = entry.get("last_exit") or {}
        if not isinstance(last.get("code"), MAYBE_INT) or not isinstance(
                last.get("signal"), (str, type(None))):
            return None
        if not all(isinstance(v, str) for v in (entry.get("logs")
                                                or {}).values()):
            return None
        if not all(isinstance(pid, int) for pid in entry.get(
                "retiring_pids") or ()):
            return None
    return doc


def reject_constant(name):
    raise ValueError("%s is not a number a status file holds" % name)


def read_status(state_dir):
    """(document, problem): the status file's document, or None and why
    it could not be read ("missing", or what is wrong with it).  A file
    the supervisor could not replace has its write bits cleared (see
    Supervisor.write_status): problem "stale" comes with its document."""
    import json
    path = os.path.join(state_dir, STATUS_FILE)
    try:
        with open(path, "rb") as handle:
            stale = not os.fstat(handle.fileno()).st_mode & stat.S_IWUSR
            data = handle.read()
    except FileNotFoundError:
        return None, "missing"
    except OSError as exc:
        return None, exc.strerror or str(exc)
    try:
        doc = checked_status(json.loads(data.decode("utf-8"),
                                        parse_constant=reject_constant))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        return None, "not a status file: %s" % (str(exc)[:80] or "empty")
    if doc is None:
        return None, "not a status file: unexpected contents"
    return doc, "stale" if stale else None


def read_status_file(state_dir):
    """The status file's document, or None when it is missing or unreadable."""
    return read_status(state_dir)[0]


# ---------------------------------------------------------------------------
# Prometheus metrics: the status document in the text format that
# node_exporter's textfile collector reads (metrics_file), and that
# --status --prometheus prints.
# ---------------------------------------------------------------------------

#: (name, type, help) of each metric, in the order written.
METRICS = (
    ("fcgiwatch_up", "gauge", "1 while the supervisor runs."),
    ("fcgiwatch_start_time_seconds", "gauge",
     "When the supervisor started, as a Unix time."),
    ("fcgiwatch_last_update_timestamp_seconds", "gauge",
     "When these figures were written, as a Unix time."),
    ("fcgiwatch_service_up", "gauge", "1 when the service is up."),
    ("fcgiwatch_service_state", "gauge",
     "1 for the service's current state, 0 for the others."),
    ("fcgiwatch_service_wanted_up", "gauge",
     "1 when the service should be up."),
    ("fcgiwatch_service_restarts_total", "counter",
     "Restarts since the supervisor started."),
    ("fcgiwatch_service_start_time_seconds", "gauge",
     "When the current run started, as a Unix time (0: no run)."),
    ("fcgiwatch_service_last_exit_code", "gauge",
     "The last run's exit code; 128 + N when signal N ended it."),
    ("fcgiwatch_healthcheck_up", "gauge",
     "1 while the service's health check passes."),
)


def metric_label(value):
    """A Prometheus label value, escaped."""
    return '"%s"' % str(value).replace("\\", "\\\\").replace(
        '"', '\\"').replace("\n", "\\n")


def render_metrics(doc):
    """The status document as Prometheus text format.

    >>> print(render_metrics({"supervisor": {"started": 5, "written": 9},
    ...     "services": [{"name": "web", "state": "up", "want": "up",
    ...                   "restarts": 2, "since": 7}]}).splitlines()[11])
    fcgiwatch_service_up{name="web"} 1
    """
    info = doc["supervisor"]
    samples = dict((name, []) for name, _kind, _help in METRICS)
    samples["fcgiwatch_up"].append(("", 0 if info.get("stopped") else 1))
    samples["fcgiwatch_start_time_seconds"].append(
        ("", info.get("started", 0)))
    samples["fcgiwatch_last_update_timestamp_seconds"].append(
        ("", info.get("written", 0)))
    for entry in doc["services"]:
        name = "name=%s" % metric_label(entry["name"])
        label = "{%s}" % name
        samples["fcgiwatch_service_up"].append(
            (label, 1 if entry["state"] == UP else 0))
        for state in STATES:
            samples["fcgiwatch_service_state"].append(
                ("{%s,state=%s}" % (name, metric_label(state)),
                 1 if entry["state"] == state else 0))
        samples["fcgiwatch_service_wanted_up"].append(
            (label, 1 if entry.get("want") == "up" else 0))
        samples["fcgiwatch_service_restarts_total"].append(
            (label, entry.get("restarts", 0)))
        samples["fcgiwatch_service_start_time_seconds"].append(
            (label, entry.get("started") or 0))
        last = entry.get("last_exit") or {}
        if last.get("code") is not None:
            samples["fcgiwatch_service_last_exit_code"].append(
                (label, last["code"]))
        elif last.get("signal"):
            number = getattr(signal, "SIG" + last["signal"], None)
            if number is not None:
                samples["fcgiwatch_service_last_exit_code"].append(
                    (label, 128 + int(number)))
        if entry.get("health", "none") != "none":
            samples["fcgiwatch_healthcheck_up"].append(
                (label, 1 if entry["health"] == "ok" else 0))
    lines = []
    for metric, kind, text in METRICS:
        if not samples[metric]:
            continue
        lines.append("# HELP %s %s" % (metric, text))
        lines.append("# TYPE %s %s" % (metric, kind))
        for label, value in samples[metric]:
            lines.append("%s%s %s" % (metric, label, value))
    return "\n".join(lines) + "\n"


def show_status(state_dir, names, as_json, out=None):
    """--status: print and return the exit code."""
    out = out or sys.stdout
    pid = supervisor_pid(state_dir)
    doc, problem = read_status(state_dir)
    path = os.path.join(state_dir, STATUS_FILE)
    if pid is not None and problem is not None:
        # The file is missing, unreadable or stale: ask the supervisor.
        answer = ask_status(state_dir)
        if answer is not None:
            why = answer["supervisor"].get("status_file")
            sys.stderr.write("fcgiwatch: %s is %s%s; this is the "
                             "supervisor's own answer\n" % (
                                 path, "stale" if problem == "stale" or why
                                 else problem,
                                 " (cannot write it: %s)" % why if why
                                 else ""))
            doc = answer
        elif doc is not None:
            sys.stderr.write("fcgiwatch: %s is stale: the supervisor could "
                             "not replace it; what follows may be out of "
                             "date\n" % path)
    if pid is None:
        message = "fcgiwatch: not running (state_dir %s)" % state_dir
        if doc is not None:
            info = doc.get("supervisor", {})
            try:
                when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(
                    info.get("written", 0)))
            except (OverflowError, ValueError, OSError):
                when = "an unknown time"
            if info.get("stopped"):
                message += "; pid %s stopped at %s" % (info.get("pid"), when)
            else:
                message += "; pid %s died, last seen alive at %s" % (
                    info.get("pid"), when)
        sys.stderr.write(message + "\n")
        return EXIT_FAIL
    if doc is None:
        sys.stderr.write("fcgiwatch: running (pid %d) but %s is %s, and "
                         "the supervisor did not answer\n" % (
                             pid, path, problem))
        return EXIT_FAIL
    entries = doc.get("services", [])
    if names:
        known = dict((e["name"], e) for e in entries)
        try:
            chosen = choose_services(names, [
                (e["name"], e.get("program") or e["name"])
                for e in entries], doc["supervisor"].get("groups") or ())
        except UsageError as exc:
            sys.stderr.write("fcgiwatch: %s\n" % exc)
            return EXIT_USAGE
        entries = [known[n] for n in chosen]
    wall = time.time()
    if as_json == "prometheus":
        out.write(render_metrics(dict(doc, services=entries)))
    elif as_json:
        import json
        info = doc["supervisor"]
        info["uptime"] = round(wall - info.get("started", wall), 3)
        for entry in entries:
            entry["seconds"] = round(max(0.0, wall - entry["since"]), 3)
        doc["services"] = entries
        out.write(json.dumps(doc, indent=1) + "\n")
    else:
        out.write("".join(format_status_line(e, wall) + "\n"
                          for e in entries))
    return status_exit_code(entries, wall)


# ===========================================================================
# Control protocol
#
# A unix stream socket in state_dir, mode 0600, and the peer's uid checked
# again (SO_PEERCRED): root or the supervisor's own user may control.
# A request is one JSON line {"cmd": ..., "names": [...], "signal": ...};
# the answer is JSON lines {"out": text} or {"err": text}, then
# {"exit": code}.  Commands wait for their result (a bounded wait) before
# answering, so "--restart web" prints the new pid.
# ===========================================================================

COMMANDS = ("start", "stop", "restart", "signal", "reload", "shutdown",
            "reexec", "status", "tail")


class Connection:
    """One control client: buffered, non-blocking, with a deadline for its
    request so an idle client cannot hold a slot for ever."""

    IDLE = 10.0
    #: Connections open at once: of root and our user, of everyone else.
    MAX_OPEN = 64
    MAX_UNPRIVILEGED = 16

    def __init__(self, server, sock, uid):
        self.server, self.sock, self.uid = server, sock, uid
        self.supervisor = supervisor = server.supervisor
        self.privileged = uid in (0, supervisor.euid)
        self.inbuf = b""
        self.outbuf = b""
        self.pending = None       # messages still to stream, and then
        self.pending_code = None  # the exit code
        self.closed = False
        self.closing = False
        self.lingering = False
        self.follow = None        # a Follow, for --tail -f
        self.deadline = supervisor.clock() + self.IDLE
        sock.setblocking(False)
        supervisor.watch(sock.fileno(), EVENT_READ, self.on_event)

    def on_event(self, mask):
        if mask & EVENT_WRITE:
            self.flush()
        if mask & EVENT_READ and not self.closed:
            try:
                data = self.sock.recv(4096)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                self.close()  # the client left; its request runs on
                return
            if self.deadline is None or self.lingering:
                return  # one request a connection: discard the rest
            self.inbuf += data
            if b"\n" in self.inbuf:
                line = self.inbuf.split(b"\n", 1)[0]
                self.inbuf = b""
                self.deadline = None
                self.server.handle(self, line)
            elif len(self.inbuf) > CONTROL_REQUEST_MAX:
                self.deadline = None
                self.reply_error("request too long", EXIT_USAGE)

    def send(self, message):
        import json
        if self.closed:
            return
        self.outbuf += json.dumps(message).encode("utf-8") + b"\n"
        if len(self.outbuf) > 1 << 20:
            self.close()  # a client that never reads
            return
        self.flush()

    def stream(self, messages, code):
        """Send messages (an iterator) as the client reads them, never more
        than STREAM_AHEAD bytes ahead, then the exit code: an answer of any
        size (the status of thousands of services) without holding it all
        in a buffer, and without waiting for a slow reader."""
        self.pending, self.pending_code = messages, code
        self.flush()

    def refill(self):
        import json
        while self.pending is not None and len(self.outbuf) < STREAM_AHEAD:
            message = next(self.pending, None)
            if message is None and self.follow is not None:
                self.pending = None  # streamed: now it follows
                self.follow.release()
                return
            if message is None:
                message = {"exit": self.pending_code}
                self.pending, self.closing = None, True
            self.outbuf += json.dumps(message).encode("utf-8") + b"\n"

    def flush(self):
        self.refill()
        while self.outbuf and not self.closed:
            try:
                sent = self.sock.send(self.outbuf)
            except (BlockingIOError, InterruptedError):
                self.supervisor.watch(self.sock.fileno(), EVENT_READ
                                      | EVENT_WRITE, self.on_event)
                return
            except OSError:
                self.close()
                return
            self.outbuf = self.outbuf[sent:]
            self.refill()
        if not self.closed:
            if self.closing:
                # Half-close and wait for the client's EOF: closing with its
                # unread input pending would reset the connection and lose
                # our answer.  The deadline bounds the wait.
                try:
                    self.sock.shutdown(socket.SHUT_WR)
                except OSError:
                    self.close()
                    return
                self.closing = False
                self.lingering = True
                self.deadline = self.supervisor.clock() + self.IDLE
            self.supervisor.watch(self.sock.fileno(),
                                  EVENT_READ, self.on_event)

    def reply_error(self, text, code):
        self.send({"err": "fcgiwatch: " + text})
        self.finish(code)

    def finish(self, code):
        # What a command reports must be what --status reads right after.
        if self.supervisor.status_dirty:
            self.supervisor.disk.write_status()
        self.send({"exit": code})
        self.closing = True
        self.flush()

    def on_timeout(self):
        self.deadline = None
        if self.lingering:
            self.close()
            return
        self.reply_error("no request within %d seconds" % self.IDLE,
                         EXIT_USAGE)

    def close(self):
        if self.closed:
            return
        self.closed = True
        self.supervisor.unwatch(self.sock.fileno())
        self.sock.close()
        if self.follow is not None:
            self.follow.end()
        if self in self.server.connections:
            self.server.connections.remove(self)


class Follow:
    """A --tail -f reader: new lines of its services as they come, never
    more than FOLLOW_AHEAD bytes ahead of what it read; past that, lines
    are dropped for it, and it is told how many."""

    def __init__(self, connection, services, prefix):
        self.connection, self.services = connection, services
        self.prefix = prefix      # name each line (a pool, a group)
        self.lost = 0
        self.held = []            # new lines while the last ones stream
        self.held_size = 0
        for service in services:
            service.followers.append(self)

    def feed(self, service, data, _stream):
        connection = self.connection
        if connection.closed:
            return
        lines = data.split(b"\n")[:-1]
        behind = self.held_size if connection.pending is not None else \
            len(connection.outbuf)
        if behind > FOLLOW_AHEAD:
            self.lost += len(lines)
            return
        text = output_text(lines, service.name + ": " if self.prefix
                           else "")
        if connection.pending is not None:
            self.held.append(text)  # after the lines asked for
            self.held_size += len(text)
            return
        if self.lost:
            connection.send({"err": "fcgiwatch: %d lines not shown: this "
                             "reader fell behind" % self.lost})
            self.lost = 0
        connection.send({"text": text})

    def release(self):
        """The lines asked for are sent: now what came meanwhile."""
        held, self.held, self.held_size = self.held, [], 0
        if held:
            self.connection.send({"text": "".join(held)})

    def end(self):
        for service in self.services:
            if self in service.followers:
                service.followers.remove(self)


class Request:
    """A control command waiting for services to reach their goals.

    waits: [name, goal, mark] with goal "up" (spawned after mark, and up),
    "down", or "gone" (removed); mark is the service's spawn count when the
    command was given, so an old run that is still up does not count.
    """

    def __init__(self, connection, verb, waits, bound, now):
        self.connection, self.verb = connection, verb
        self.waits = [list(w) for w in waits]
        self.bound = bound
        self.deadline = now + bound if bound is not None else None
        self.code = EXIT_OK

    def finish(self, server, line=None, code=None):
        if line:
            self.connection.send({"out": line})
        self.connection.finish(self.code if code is None else code)
        if self in server.requests:
            server.requests.remove(self)


def who_may_control(euid):
    """The answer to a user who may not control this supervisor."""
    return "permission denied: only root%s may control this supervisor" % (
        " or %s" % current_user(euid)[0] if euid else "")


def wait_time(config):
    """A bound on how long a start or restart of this service may take."""
    seconds = config.stopwaitsecs + GROUP_KILL_GRACE + config.startsecs + 5
    if config.healthcheck:
        seconds += config.healthcheck_interval + config.healthcheck_timeout
    return seconds


class ControlServer:
    """The supervisor's side of the control socket: connections, the
    commands, and the requests still waiting for their services."""

    def __init__(self, supervisor):
        self.supervisor = supervisor
        self.path = os.path.join(supervisor.settings.state_dir,
                                 CONTROL_SOCKET)
        self.connections = []
        self.requests = []
        if len(self.path.encode()) > 100:
            raise Failure("state_dir %s is too long for a unix socket path; "
                          "choose a shorter state_dir"
                          % supervisor.settings.state_dir)
        self.sock = None
        self.bound = None         # (st_dev, st_ino) of the socket we bound
        self.accept_again = None  # accepting paused (no fd left) until
        self.listen_file()
        # The lock socket takes requests too: it is how --status and the
        # commands reach us when state_dir (and so this socket) is gone.
        lock = supervisor.disk.lock_sock
        if lock is not None:
            supervisor.watch(lock.fileno(), EVENT_READ,
                             lambda _mask: self.on_accept(lock))

    def listen_file(self):
        """Listen on state_dir/control.sock (again, after state_dir was
        removed)."""
        supervisor = self.supervisor
        if self.sock is not None:
            supervisor.unwatch(self.sock.fileno())
            self.sock.close()
            self.sock = None
        # Only our user (and root) may connect; SO_PEERCRED checks again
        # should the mode ever be loosened by hand.
        sock, self.bound = bind_state_socket(self.path, socket.SOCK_STREAM,
                                             0o177)
        self.sock = sock
        supervisor.watch(sock.fileno(), EVENT_READ,
                         lambda _mask: self.on_accept(sock))

    def file_socket_ours(self):
        return path_identity(self.path) == self.bound

    def close(self):
        for connection in list(self.connections):
            connection.close()
        lock = self.supervisor.disk.lock_sock
        if lock is not None:
            self.supervisor.unwatch(lock.fileno())
        self.supervisor.unwatch(self.sock.fileno())
        self.sock.close()
        if self.file_socket_ours():
            try:
                os.unlink(self.path)
            except OSError:
                pass

    def listeners(self):
        lock = self.supervisor.disk.lock_sock
        return [sock for sock in (self.sock, lock) if sock is not None]

    def pause_accepting(self):
        for sock in self.listeners():
            self.supervisor.unwatch(sock.fileno())
        self.accept_again = self.supervisor.clock() + ACCEPT_PAUSE

    def resume_accepting(self):
        self.accept_again = None
        for sock in self.listeners():
            self.supervisor.watch(sock.fileno(), EVENT_READ,
                                  lambda _mask, sock=sock:
                                  self.on_accept(sock))

    def deadlines(self):
        times = [r.deadline for r in self.requests if r.deadline is not None]
        times.extend(c.deadline for c in self.connections
                     if c.deadline is not None)
        if self.accept_again is not None:
            times.append(self.accept_again)
        return times

    def on_accept(self, listener):
        try:
            sock, _address = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            # Out of file descriptors the client stays queued, and the
            # socket stays readable: without a pause, the loop would spin.
            self.supervisor.warn("control socket: accept failed: %s; not "
                                 "accepting for %d s" % (
                                     os_error_words(exc), ACCEPT_PAUSE))
            self.pause_accepting()
            return
        try:
            uid = peer_credentials(sock)[1]
        except OSError:
            sock.close()
            return
        privileged = uid in (0, self.supervisor.euid)
        if not self.make_room(privileged):
            sock.close()
            return
        self.connections.append(Connection(self, sock, uid))
        self.supervisor.disk.check()

    def make_room(self, privileged):
        """Room for one more connection?  Users who may only read the
        status (anyone may connect to the lock socket) share a few places,
        and make room among themselves: however many connections they
        open, a command of root's (or of our user's) waiting for its
        answer is never closed for them.  Among the privileged, the oldest
        that is idle goes; with none idle, the newcomer is refused."""
        mine = [c for c in self.connections if c.privileged == privileged]
        if len(mine) < (Connection.MAX_OPEN if privileged
                        else Connection.MAX_UNPRIVILEGED):
            return True
        idle = [c for c in mine if c.deadline is not None]
        if idle or not privileged:
            (idle or mine)[0].close()
            return True
        return False

    def handle(self, connection, line):
        """Check and carry out one request line."""
        import json
        supervisor = self.supervisor
        try:
            request = json.loads(line.decode("utf-8"))
            if not isinstance(request, dict):
                raise ValueError("not a JSON object")
            command = request.get("cmd")
            names = request.get("names", [])
            if command not in COMMANDS:
                raise ValueError("unknown command %r" % (command,))
            if not isinstance(names, list) or not all(
                    isinstance(n, str) for n in names):
                raise ValueError("names must be a list of strings")
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            connection.reply_error("bad request: %s" % exc, EXIT_USAGE)
            return
        if command == "status":
            # Anyone may read the status file: anyone may ask for it.  The
            # services follow one a line: thousands make megabytes.
            doc = supervisor.status_document()
            doc["supervisor"]["status_file"] = supervisor.disk.status.problem
            entries, doc["services"] = doc["services"], []
            connection.stream(chain([{"status": doc}], ({"entry": entry}
                                                        for entry in entries)),
                              EXIT_OK)
            return
        if connection.uid not in (0, supervisor.euid):
            connection.reply_error(who_may_control(supervisor.euid),
                                   EXIT_FAIL)
            return
        if supervisor.shutting_down:
            connection.reply_error("shutting down; no more commands",
                                   EXIT_FAIL)
            return
        try:
            getattr(self, "command_" + command)(connection, request, names)
        except UsageError as exc:
            connection.reply_error(str(exc), EXIT_USAGE)

    def select(self, names):
        """The services named, in order; "all" means every one."""
        services = self.supervisor.services
        if not names:
            raise UsageError("name at least one service, or all")
        if names == ["all"]:
            return list(services.values())
        rows = [(s.name, s.config.program) for s in services.values()]
        try:
            chosen = choose_services(names, rows,
                                     self.supervisor.config.groups)
        except UsageError as exc:
            raise UsageError("%s; nothing was done" % exc)
        return [services[name] for name in chosen]

    # -- the commands ------------------------------------------------------

    def command_start(self, connection, request, names):
        """Start these, and first what they depend on (not named, and up
        already: not mentioned); remembered as a standing order."""
        supervisor = self.supervisor
        now = supervisor.clock()
        chosen = self.select(names)
        wanted = [supervisor.services[name] for name in
                  supervisor.deps.closure(chosen, upward=True)]
        wanted = [s for s in wanted if s not in chosen] + chosen
        supervisor.deps.cancel(wanted)
        supervisor.orders.give(wanted, "up")
        waits = []
        for service in wanted:
            if service.state == UP:
                if service in chosen:
                    connection.send({"out": "%s: already up (pid %d)" % (
                        service.name, service.pid)})
                continue
            mark = service.spawns - (1 if service.state == STARTING else 0)
            service.on_want_up(now)
            waits.append((service.name, "up", mark))
        self.wait(connection, "start", waits, sum(
            wait_time(s.config) for s in wanted if s not in chosen))

    def command_stop(self, connection, request, names):
        """Stop these, and first what depends on them (each down before
        what it needs is signalled); remembered as a standing order."""
        supervisor = self.supervisor
        now = supervisor.clock()
        chosen = self.select(names)
        others = [supervisor.services[name] for name in
                  supervisor.deps.closure(chosen, upward=False)]
        others = [s for s in others if s not in chosen and (
            s.want == "up" or s.state in RUNNING_STATES)]
        for service in others:
            connection.send({"out": "%s: depends on %s; stopped first" % (
                service.name, ", ".join(n for n in service.config.depends_on
                                        if n in supervisor.services))})
        supervisor.orders.give(others + chosen, "down")
        waits = []
        for service in others + chosen:
            was = service.state
            if service in chosen and was in (DOWN, FATAL, BACKOFF):
                connection.send({"out": "%s: %s" % (
                    service.name, "already stopped" if was == DOWN
                    else "stopped (was %s)" % was)})
            elif was in RUNNING_STATES:
                waits.append((service.name, "down", service.spawns))
        waves = supervisor.deps.stop(others + chosen, "stopped", now)
        services = supervisor.services
        self.wait(connection, "stop", waits, sum(
            max(wait_time(services[n].config) for n in wave)
            for wave in waves[:-1]))

    def command_restart(self, connection, request, names):
        supervisor = self.supervisor
        now = supervisor.clock()
        waits = []
        chosen = self.select(names)
        supervisor.deps.cancel(chosen)
        supervisor.orders.give(chosen, "up")
        for service in chosen:
            waits.append((service.name, "up", service.spawns))
        supervisor.rolls.restart(chosen, now)
        self.wait(connection, "restart", waits)

    def command_signal(self, connection, request, names):
        try:
            number = to_signal(str(request.get("signal", "")))
        except ValueError as exc:
            raise UsageError(str(exc))
        code = EXIT_OK
        for service in self.select(names):
            pid = service.pid
            if service.send_signal(number):
                connection.send({"out": "%s: sent %s (pid %d)" % (
                    service.name, signal_name(number), pid)})
                service.log("sent %s to pid %d on request" % (
                    signal_name(number), pid))
            else:
                connection.send({"err": "%s: not running, no signal sent"
                                 % service.name})
                code = EXIT_FAIL
        connection.finish(code)

    def command_tail(self, connection, request, names):
        """The last lines of a service (of a pool's or group's instances,
        each line named, in the order written); with follow, then each
        new line until the client leaves."""
        count = request.get("lines", TAIL_LINES)
        if not isinstance(count, int) or not 0 < count <= 100000:
            raise UsageError("lines must be a number from 1 to 100000")
        chosen = self.select(names)
        found = []
        for service in chosen:
            if service.recent is not None:
                found.extend((number, service.name, line) for number, line
                             in service.recent.lines())
        found.sort(key=lambda item: item[0])  # stable: in order within one
        found = found[-count:]
        prefix = len(chosen) > 1
        messages = ({"text": output_text([line], name + ": " if prefix
                                         else "")}
                    for _number, name, line in found)
        if request.get("follow"):
            connection.send({"timeout": None})
            connection.follow = Follow(connection, chosen, prefix)
        connection.stream(messages, EXIT_OK)

    def command_reload(self, connection, request, names):
        code, lines, waits = self.supervisor.reload("--reload")
        for line in lines:
            connection.send({"err" if code else "out": line})
        if code:
            connection.finish(code)
        else:
            self.wait(connection, "reload", waits)

    def command_shutdown(self, connection, request, names):
        supervisor = self.supervisor
        connection.send({"out": "fcgiwatch: shutting down (pid %d)"
                         % supervisor.pid})
        supervisor.begin_shutdown("--shutdown")
        # Answered by finish_all() when the last service is down.
        self.requests.append(Request(connection, "shutdown", [], None,
                                     supervisor.clock()))

    def command_reexec(self, connection, request, names):
        def done(code, lines):
            for line in lines:
                connection.send({"err" if code else "out": line})
            connection.finish(code)
        connection.send({"timeout": 60})
        self.supervisor.handover.begin("--reexec", done)

    # -- waiting for results -----------------------------------------------

    def wait(self, connection, verb, waits, before=0):
        """Answer once each wait is decided, or at a bound on how long they
        may take (before: seconds of what goes first, dependencies)."""
        if not waits:
            connection.finish(EXIT_OK)
            return
        services = self.supervisor.services
        bound = before + max([wait_time(services[name].config) * (
            1 + self.supervisor.rolls.position(services[name]))
                              for name, _goal, _mark in waits
                              if name in services] + [5])
        connection.send({"timeout": bound})
        request = Request(connection, verb, waits, bound,
                          self.supervisor.clock())
        self.requests.append(request)
        self.check_request(request, self.supervisor.clock())

    def check(self, now):
        if self.accept_again is not None and now >= self.accept_again:
            self.resume_accepting()
        for connection in list(self.connections):
            if connection.deadline is not None and now >= connection.deadline:
                connection.on_timeout()
        for request in list(self.requests):
            if request.waits:
                self.check_request(request, now)

    def check_request(self, request, now):
        """Answer each service that reached its goal; at the deadline,
        give up on the rest."""
        for wait in list(request.waits):
            ok, line = self.wait_result(request, wait, now)
            if line is None:
                continue
            request.waits.remove(wait)
            if not ok:
                request.code = EXIT_FAIL
            request.connection.send({"out" if ok else "err": line})
        if not request.waits:
            request.finish(self)

    def wait_result(self, request, wait, now):
        """(ok, line) once a wait is decided, else (None, None)."""
        name, goal, mark = wait
        service = self.supervisor.services.get(name)
        if goal == "gone":
            if service is None or not service.removing:
                return True, "%s: stopped" % name  # after "removed, stopping"
        elif service is None:
            return False, "%s: removed meanwhile" % name
        elif goal == "down":
            if service.state in (DOWN, FATAL):
                return True, "%s: stopped" % name
        elif service.roll_note is not None and service.roll_note[0] == mark:
            return False, "%s: not restarted: %s" % (name,
                                                     service.roll_note[1])
        elif service.waiting and any(
                other.state == FATAL or other.want == "down"
                for other in self.supervisor.deps.blockers(service)):
            # It waits on, but for what will not come up by itself.
            return False, "%s: not started: waiting for %s" % (
                name, self.supervisor.deps.describe_wait(service))
        else:
            outcome = service.outcome_since(mark)
            if outcome is True:
                return True, "%s: %s (pid %d)" % (name, {
                    "start": "started", "restart": "restarted",
                    "reload": "running"}[request.verb], service.pid)
            if outcome is not None:
                return False, "%s: %s" % (name, outcome[0])
        if now >= request.deadline:
            state = service.state if service else "gone"
            return False, "%s: still %s after %d seconds; see --status %s" % (
                name, state, request.bound, name)
        return None, None

    def finish_all(self, line):
        for request in list(self.requests):
            request.finish(self, line, EXIT_OK)
        for connection in list(self.connections):
            connection.close()


# -- client side ------------------------------------------------------------

def send_command(state_dir, request, out=None, err=None):
    """Send one request, print the answer as it comes; return the exit code."""
    import json
    out, err = out or sys.stdout, err or sys.stderr
    path = os.path.join(state_dir, CONTROL_SOCKET)
    sock = None
    try:
        try:
            sock = connect_control(state_dir)
        except (FileNotFoundError, ConnectionRefusedError):
            pid = supervisor_pid(state_dir)
            if pid is None:
                err.write("fcgiwatch: not running (no supervisor holds %s)\n"
                          % state_dir)
            else:
                err.write("fcgiwatch: supervisor (pid %d) has no control "
                          "socket at %s\n" % (pid, path))
            return EXIT_FAIL
        except PermissionError:
            err.write("fcgiwatch: permission denied: only root and the "
                      "supervisor's own user may use %s\n" % path)
            return EXIT_FAIL
        except socket.timeout:
            err.write("fcgiwatch: the supervisor is not answering at %s\n"
                      % path)
            return EXIT_FAIL
        sock.sendall(json.dumps(request).encode("utf-8") + b"\n")
        handle = sock.makefile("rb")
        while True:
            try:
                line = handle.readline()
            except socket.timeout:
                err.write("fcgiwatch: no answer from the supervisor within "
                          "%d seconds\n" % sock.gettimeout())
                return EXIT_FAIL
            if not line:
                if request.get("cmd") == "shutdown":
                    out.write("fcgiwatch: stopped\n")
                    return EXIT_OK
                err.write("fcgiwatch: the supervisor closed the connection "
                          "without an answer\n")
                return EXIT_FAIL
            try:
                message = json.loads(line.decode("utf-8"))
            except ValueError:
                continue
            if "timeout" in message:
                sock.settimeout(None if message["timeout"] is None
                                else float(message["timeout"]) + 10)
            if "text" in message:
                out.write(message["text"])
                out.flush()
            if "out" in message:
                out.write(message["out"] + "\n")
                out.flush()
            if "err" in message:
                err.write(message["err"] + "\n")
                err.flush()
            if "exit" in message:
                return int(message["exit"])
    except OSError as exc:
        err.write("fcgiwatch: control socket %s: %s\n" % (
            path, exc.strerror or exc))
        return EXIT_FAIL
    finally:
        if sock is not None:
            sock.close()


def connect_control(state_dir, lock_first=False):
    """A socket connected to state_dir's supervisor: at its control
    socket, or, where that is gone (state_dir removed), at its lock
    socket.  lock_first: the lock socket first (--status: anyone may ask
    there, where the control socket is only for root and the owner).
    Raises the OSError of the first way tried when neither works."""
    ways = [os.path.join(state_dir, CONTROL_SOCKET), lock_address(state_dir)]
    if lock_first:
        ways.reverse()
    first = None
    trusted = trusted_uids(state_dir)
    for address in ways:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(CONTROL_ANSWER_TIMEOUT)
        try:
            sock.connect(address)
            # Anyone may bind the lock socket's name: nothing is sent to,
            # nor believed from, a process of a user we do not trust.
            if peer_credentials(sock)[1] not in trusted:
                raise ConnectionRefusedError(
                    errno.ECONNREFUSED, "not a supervisor's socket")
            return sock
        except OSError as exc:
            sock.close()
            first = first or exc
            if not isinstance(exc, (FileNotFoundError,
                                    ConnectionRefusedError)) and \
                    not lock_first:
                break
    raise first


def ask_status(state_dir):
    """The status document from the supervisor itself, or None."""
    import json
    try:
        sock = connect_control(state_dir, lock_first=True)
    except OSError:
        return None
    try:
        handle = sock.makefile("rb")
        sock.sendall(b'{"cmd": "status", "names": []}\n')
        doc = None
        for line in handle:
            message = json.loads(line.decode("utf-8"))
            if not isinstance(message, dict):
                continue
            if isinstance(message.get("status"), dict):
                doc = message["status"]
            elif "entry" in message and doc is not None and \
                    isinstance(doc.get("services"), list):
                doc["services"].append(message["entry"])  # one a line
            elif "exit" in message:
                return checked_status(doc) if doc is not None else None
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    finally:
        sock.close()
    return None


# ===========================================================================
# supervisord's XML-RPC interface
#
# Where the config has [unix_http_server] (or a loopback, password-guarded
# [inet_http_server]), supervisorctl and the tools built on supervisord's
# API 3.0 talk to the same loop: HTTP/1.1 read without blocking, POST /RPC2
# decoded on expat (loaded only when served; see parse_xmlrpc_call), each
# method found in RPC_METHODS by its exact name (never by walking dotted
# attributes: CVE-2017-11610), and carried out by the control commands'
# own code, so supervisorctl's "stop web" is fcgiwatch's --stop web.
# GET /logtail/NAME/stdout streams new output as --tail -f does.
# ===========================================================================

RPC_API_VERSION = "3.0"
RPC_BODY_MAX = 1 << 20        # a request body; XML-RPC calls are small
RPC_HEAD_MAX = 16 << 10
RPC_REQUEST_TIME = 10.0       # from a request's first byte to its last
RPC_IDLE = 600.0              # a kept-alive connection between requests
RPC_OUT_MAX = 64 << 20        # an answer nobody reads: close
RPC_READ_MAX = 1 << 20        # bytes of a log file one call may read
RPC_TAIL_START = 1600         # of the log, before a /logtail follows it

#: supervisord's fault codes (its xmlrpc.py), as supervisorctl knows them.
(FAULT_UNKNOWN_METHOD, FAULT_INCORRECT_PARAMETERS, FAULT_BAD_ARGUMENTS,
 FAULT_SHUTDOWN_STATE, FAULT_BAD_NAME, FAULT_BAD_SIGNAL, FAULT_NO_FILE,
 FAULT_FAILED, FAULT_ABNORMAL_TERMINATION, FAULT_SPAWN_ERROR,
 FAULT_ALREADY_STARTED, FAULT_NOT_RUNNING, FAULT_SUCCESS,
 FAULT_ALREADY_ADDED, FAULT_STILL_RUNNING, FAULT_CANT_REREAD) = (
     1, 2, 3, 6, 10, 11, 20, 30, 40, 50, 60, 70, 80, 90, 91, 92)

#: Our states as supervisord's process states (code, name); a service
#: down after an exit that was not restarted is EXITED (100).
SUPERVISORD_STATES = {STARTING: (10, "STARTING"), UP: (20, "RUNNING"),
                      BACKOFF: (30, "BACKOFF"), STOPPING: (40, "STOPPING"),
                      DOWN: (0, "STOPPED"), FATAL: (200, "FATAL")}

#: Characters XML 1.0 cannot carry, which a service's output may hold.
#: (A pattern, compiled by re's own cache at its first use: nothing is
#: compiled at import for a supervisor that serves no client.)
XML_UNSAFE = u"[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]"


#: A start or stop: the states it leaves alone, the states it aims at, the
#: fault for a service already there, the fault when it does not get there.
RPC_GOALS = {
    "start": ((STARTING, UP), (UP,), FAULT_ALREADY_STARTED, FAULT_SPAWN_ERROR),
    "stop": ((DOWN, FATAL), (DOWN, FATAL), FAULT_NOT_RUNNING, FAULT_FAILED)}


class RpcFault(Exception):
    """A supervisord fault: supervisorctl turns its code into its words."""

    def __init__(self, code, text=""):
        Exception.__init__(self, text)
        self.code, self.text = code, str(text)


def split_namespec(spec):
    """supervisord's (group, process) of a name: "g:p", "g:*" (process
    None: the whole group), or "p" (its own group).

    >>> split_namespec("web"), split_namespec("g:*"), split_namespec("g:p")
    (('web', 'web'), ('g', None), ('g', 'p'))
    """
    group, colon, process = spec.partition(":")
    if not colon:
        return spec, spec
    return group, (process if process not in ("", "*") else None)


def process_description(state, info, wall_now):
    """supervisord's description of a process (what supervisorctl status
    prints after the state), from its info fields.

    >>> process_description(20, {"pid": 7, "start": 100, "now": 3823}, 0)
    'pid 7, uptime 1:02:03'
    >>> process_description(0, {"start": 0}, 0)
    'Not started'
    >>> process_description(30, {"spawnerr": "", "name": "web"}, 0)
    'unknown error (try "tail web")'
    """
    if state == 20:
        seconds = max(0, info["now"] - info["start"])
        return "pid %s, uptime %d:%02d:%02d" % (
            info["pid"], seconds // 3600, seconds // 60 % 60, seconds % 60)
    if state in (30, 200):
        return info["spawnerr"] or 'unknown error (try "tail %s")' % (
            info["name"],)
    if state in (0, 100):
        if not info["start"]:
            return "Not started"
        return time.strftime("%b %d %I:%M %p", time.localtime(info["stop"]))
    return ""


def log_range(size, offset, length):
    """(start, end) of what supervisord's readProcessStdoutLog(offset,
    length) returns from a log of size bytes: a negative offset is the
    last -offset bytes (length 0), else length bytes from offset (0: to
    the end).  RpcFault BAD_ARGUMENTS otherwise.

    >>> log_range(5000, -1600, 0), log_range(10, 4, 0), log_range(10, 4, 3)
    ((3400, 5000), (4, 10), (4, 7))
    """
    if offset < 0:
        if length:
            raise RpcFault(FAULT_BAD_ARGUMENTS, "a negative offset reads to "
                           "the end: give length 0")
        return max(0, size + offset), size
    if length < 0:
        raise RpcFault(FAULT_BAD_ARGUMENTS, "length may not be negative")
    start = min(offset, size)
    return start, size if not length else min(size, offset + length)


def tail_range(size, offset, length):
    """(start, end, overflow) of supervisord's tailProcessStdoutLog: up to
    length bytes from offset, moved to the end (overflow) when more than
    length bytes lie past offset.

    >>> tail_range(100, 0, 10), tail_range(100, 95, 10), tail_range(9, 20, 5)
    ((90, 100, True), (90, 100, False), (9, 9, False))
    """
    overflow = size > offset + length
    if overflow:
        offset = size - 1
    if offset + length > size:
        if offset > size - 1:
            length = 0
        offset = size - length
    offset, length = max(0, offset), max(0, length)
    return offset, offset + length, overflow


def xml_text(data):
    """Output bytes as text an XML-RPC answer may carry."""
    return re.sub(XML_UNSAFE, u"\ufffd", data.decode("utf-8", "replace"))


# XML-RPC by hand, on expat: xmlrpc.client would do it, but it loads
# http.client and the email package, 5 MiB of the supervisor's memory for
# the rest of its life, and it parses whatever DTD a client sends.

def xml_escape(text):
    return re.sub(XML_UNSAFE, u"\ufffd", text.replace("&", "&amp;").replace(
        "<", "&lt;").replace(">", "&gt;"))


def xmlrpc_value(value):
    """One value as XML-RPC's <value>; TypeError or OverflowError for what
    it cannot carry (None, an int past 32 bits).

    >>> xmlrpc_value({"a": [1, True, "x<"]})[:49]
    '<value><struct><member><name>a</name><value><arra'
    """
    if value is True or value is False:
        return "<value><boolean>%d</boolean></value>" % value
    if isinstance(value, int):
        if not -2 ** 31 <= value < 2 ** 31:
            raise OverflowError("%d does not fit XML-RPC's int" % value)
        return "<value><int>%d</int></value>" % value
    if isinstance(value, float):
        return "<value><double>%r</double></value>" % value
    if isinstance(value, str):
        return "<value><string>%s</string></value>" % xml_escape(value)
    if isinstance(value, (list, tuple)):
        return "<value><array><data>%s</data></array></value>" % "".join(
            xmlrpc_value(item) for item in value)
    if isinstance(value, dict):
        return "<value><struct>%s</struct></value>" % "".join(
            "<member><name>%s</name>%s</member>" % (
                xml_escape(key), xmlrpc_value(item))
            for key, item in value.items())
    raise TypeError("XML-RPC cannot carry %s" % type(value).__name__)


def xmlrpc_response(value):
    """A methodResponse: a value, or an RpcFault as XML-RPC's fault."""
    if isinstance(value, RpcFault):
        return ("<?xml version='1.0'?>\n<methodResponse><fault>%s</fault>"
                "</methodResponse>\n" % xmlrpc_value(
                    {"faultCode": value.code, "faultString": value.text}))
    return ("<?xml version='1.0'?>\n<methodResponse><params><param>%s"
            "</param></params></methodResponse>\n" % xmlrpc_value(value))


#: XML-RPC's scalar types and how their text becomes a value.
XMLRPC_SCALARS = {
    "int": int, "i4": int, "i8": int, "double": float, "string": str,
    "dateTime.iso8601": str, "nil": lambda _text: None,
    "boolean": lambda text: {"0": False, "1": True}[text.strip()],
    "base64": lambda text: bytes(text, "ascii")}  # no method takes one


def parse_xmlrpc_call(body):
    """(method name, [params]) of a methodCall; ValueError where it is not
    one.  A DTD (and so any entity of its) is refused: XML-RPC needs none,
    and entities are how a small body becomes gigabytes.

    >>> parse_xmlrpc_call(b"<methodCall><methodName>a.b</methodName>"
    ...     b"<params><param><value><i4>1</i4></value></param><param><value>"
    ...     b"<struct><member><name>k</name><value><array><data><value>x"
    ...     b"</value></data></array></value></member></struct></value>"
    ...     b"</param></params></methodCall>")
    ('a.b', [1, {'k': ['x']}])
    """
    from xml.parsers import expat
    # A frame: [kind, container, member name, member value]; values that
    # end go into the top one.
    frames = [["params", []]]
    text, found = [], {"method": None, "value": None, "typed": False,
                       "root": None}

    def refuse(*_args):
        raise ValueError("an XML-RPC call has no DTD")

    def start(tag, _attributes):
        del text[:]
        if found["root"] is None:
            found["root"] = tag
        if tag == "value":
            found["typed"] = False
        elif tag in ("array", "struct"):
            if len(frames) > 64:
                raise ValueError("nested too deep")
            frames.append([tag, [] if tag == "array" else {}, None, None])

    def end(tag):
        value = "".join(text)
        if tag in XMLRPC_SCALARS:
            found["value"], found["typed"] = XMLRPC_SCALARS[tag](value), True
        elif tag in ("array", "struct"):
            found["value"], found["typed"] = frames.pop()[1], True
        elif tag == "value":
            if not found["typed"]:
                found["value"] = value  # no type: a string
            frame = frames[-1]
            if frame[0] == "struct":
                frame[3] = found["value"]
            else:
                frame[1].append(found["value"])
        elif tag == "name" and frames[-1][0] == "struct":
            frames[-1][2] = value
        elif tag == "member":
            frame = frames[-1]
            frame[1][frame[2]] = frame[3]
        elif tag == "methodName":
            found["method"] = value.strip()
        del text[:]

    parser = expat.ParserCreate("utf-8")
    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = text.append
    try:
        parser.Parse(body, True)
    except (expat.ExpatError, KeyError, TypeError, IndexError) as exc:
        raise ValueError("not an XML-RPC call: %s" % exc)
    if found["root"] != "methodCall" or not found["method"] or \
            len(frames) != 1:
        raise ValueError("not an XML-RPC call")
    return found["method"], frames[0][1]


def parse_http_head(head):
    """(method, target, version, {lower-case name: value}) of an HTTP
    request head; ValueError where it is not one.

    >>> parse_http_head(b"POST /RPC2 HTTP/1.1\\r\\nContent-Length: 9")[::3]
    ('POST', {'content-length': '9'})
    """
    lines = head.decode("latin-1").split("\r\n")
    words = lines[0].split(" ")
    if len(words) != 3 or not words[2].startswith("HTTP/1.") or not \
            words[1].startswith("/"):
        raise ValueError("not an HTTP/1 request line")
    headers = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not name or name.strip() != name:
            raise ValueError("malformed header line")
        headers[name.lower()] = value.strip()
    return words[0], words[1], words[2], headers


def password_matches(header, auth):
    """Does an Authorization header give auth's (username, password)?
    supervisord's password may be "{SHA}" and the SHA-1 of the password
    in hex."""
    import base64
    import hashlib
    import hmac
    scheme, _space, encoded = (header or "").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        given = base64.b64decode(encoded.strip(), validate=True).decode(
            "utf-8")
    except (ValueError, UnicodeDecodeError):
        return False
    user, _colon, password = given.partition(":")
    want_user, want = auth
    if want.startswith("{SHA}"):
        password = hashlib.sha1(password.encode("utf-8")).hexdigest()
        want = want[5:].lower()
    return hmac.compare_digest(user.encode("utf-8"),
                               want_user.encode("utf-8")) and \
        hmac.compare_digest(password.encode("utf-8"), want.encode("utf-8"))


def rpc_group(config, groups):
    """The supervisord group of a service: its [group:NAME], else its
    program (a pool's instances share it)."""
    for group, members in groups:
        if config.program in members:
            return group
    return config.program


def log_file_paths(config):
    """(stdout's log file, stderr's) as supervisord names them: "" where
    a stream goes to no file; stderr written with stdout, stdout's."""
    paths = [path if path not in ("syslog", "null", "inherit") else ""
             for path in (config.stdout_logfile, config.stderr_logfile)]
    return paths[0], paths[1] or paths[0]


def pipe_stream(config, stream):
    """The stream whose pipe carries this one's output (a service whose
    stderr follows stdout writes both on "stdout")."""
    return "stdout" if stream == "stderr" and stderr_follows_stdout(
        config) else stream


def groups_of(config):
    """{supervisord group: {service name: ServiceConfig}} of a Config."""
    out = {}
    for service in config.services:
        out.setdefault(rpc_group(service, config.groups), {})[
            service.name] = service
    return out


class Capture:
    """Stands in for a control client, for an RPC method that carries out
    a control command: keeps its lines and its exit code."""

    closed = False
    follow = None

    def __init__(self):
        self.lines = []
        self.code = None

    def send(self, message):
        for key in ("out", "err"):
            if key in message:
                self.lines.append(message[key])

    def stream(self, messages, code):
        for message in messages:
            self.send(message)
        self.finish(code)

    def finish(self, code):
        self.code = code

    def reply_error(self, text, code):
        self.lines.append(text)
        self.finish(code)

    def about(self, name):
        """The last line said about one service, without its name."""
        for line in reversed(self.lines):
            if line.startswith(name + ": "):
                return line[len(name) + 2:]
        return ""


class RpcApi:
    """The methods served, each a plain method of this class reached only
    through RPC_METHODS.  A method returns its answer, raises RpcFault, or
    returns a function the loop calls until it gives the answer (not
    None): a start waits for the service to be up, as supervisord's does,
    without holding up anything else."""

    def __init__(self, server):
        self.server = server
        self.supervisor = server.supervisor
        self.pending = None       # (config, added, changed, removed) read
        self.applied = False      # by reloadConfig; applied yet?
        self.caller = None        # the connection of the call under way

    # -- names -------------------------------------------------------------

    def table(self, services=None):
        """{(group, process name): service}, and the groups' members."""
        supervisor = self.supervisor
        groups = supervisor.config.groups
        found, members = {}, {}
        for service in (services if services is not None
                        else supervisor.services.values()):
            group = rpc_group(service.config, groups)
            found[(group, service.name)] = service
            members.setdefault(group, []).append(service)
        return found, members

    def one(self, name):
        """The service a process name means; BAD_NAME otherwise."""
        if not isinstance(name, str):
            raise RpcFault(FAULT_INCORRECT_PARAMETERS, "a name is a string")
        group, process = split_namespec(name)
        found, members = self.table()
        if process is None and group in members:
            return None
        service = found.get((group, process))
        if service is None:
            raise RpcFault(FAULT_BAD_NAME, name)
        return service

    def group(self, name):
        found, members = self.table()
        if not isinstance(name, str) or name not in members:
            raise RpcFault(FAULT_BAD_NAME, name)
        return sorted(members[name], key=lambda s: s.name)

    def every(self):
        """Every service in supervisord's order for the "all" calls."""
        return sorted(self.supervisor.services.values(), key=lambda s: (
            s.config.priority, s.name))

    def command(self, verb, services, **request):
        """Carry out a control command on these services; its Capture."""
        capture = Capture()
        request["cmd"] = verb
        names = [s.name for s in services]
        try:
            getattr(self.supervisor.control, "command_" + verb)(
                capture, request, names)
        except UsageError as exc:
            capture.reply_error(str(exc), EXIT_USAGE)
        return capture

    # -- the supervisor ----------------------------------------------------

    def getAPIVersion(self):
        return RPC_API_VERSION

    def getSupervisorVersion(self):
        return VERSION

    def getIdentification(self):
        return self.supervisor.settings.rpc.identifier

    def getState(self):
        if self.supervisor.shutting_down:
            return {"statecode": -1, "statename": "SHUTDOWN"}
        return {"statecode": 1, "statename": "RUNNING"}

    def getPID(self):
        return self.supervisor.pid

    def shutdown(self):
        self.supervisor.begin_shutdown("shutdown by an XML-RPC client")
        return True

    def restart(self):
        """supervisorctl reload: the config read again, as --reload does
        (supervisord restarts everything; here what did not change keeps
        running: a reload never costs an outage)."""
        code, lines, _waits = self.supervisor.reload("supervisorctl reload")
        self.pending = None
        if code:
            raise RpcFault(FAULT_CANT_REREAD, "; ".join(
                line[len("fcgiwatch: "):] for line in lines))
        return True

    def readLog(self, offset, length):
        path = self.supervisor.settings.log_file
        if not path:
            raise RpcFault(FAULT_NO_FILE, "no log_file; fcgiwatch logs to "
                           "syslog")
        return self.read_file(path, offset, length)

    # -- processes ---------------------------------------------------------

    def process_info(self, service, group, wall):
        state = SUPERVISORD_STATES[service.state]
        if service.state == DOWN and service.last_exit is not None and \
                service.why not in STOP_REASONS:
            state = (100, "EXITED")  # it ended, and was not restarted
        run, config = service.run, service.config
        started = run.started_wall if run is not None else (
            service.since_wall if service.spawns else 0)
        logs = log_file_paths(config)
        info = {
            "name": service.name, "group": group, "start": int(started),
            "stop": int(service.since_wall) if run is None else 0,
            "now": int(wall), "state": state[0], "statename": state[1],
            "spawnerr": service.message if service.state in (
                BACKOFF, FATAL) else "",
            "exitstatus": (service.last_exit or {}).get("code") or 0,
            "logfile": logs[0], "stdout_logfile": logs[0],
            "stderr_logfile": logs[1], "pid": service.pid or 0}
        info["description"] = process_description(state[0], info, wall)
        return info

    def getProcessInfo(self, name):
        service = self.one(name)
        if service is None:
            raise RpcFault(FAULT_BAD_NAME, name)
        return self.process_info(service, split_namespec(name)[0],
                                 time.time())

    def getAllProcessInfo(self):
        found, _members = self.table()
        wall = time.time()
        return [self.process_info(found[key], key[0], wall)
                for key in sorted(found)]

    def results(self, services, status_of):
        found, _members = self.table(services)
        out = []
        for (group, name), service in sorted(found.items()):
            status, text = status_of(service)
            out.append({"name": name, "group": group, "status": status,
                        "description": text})
        return out

    def act(self, verb, name, wait):
        """startProcess or stopProcess: the control command, and with wait
        its outcome (a group's name: the group's, as supervisord does)."""
        skip, goal, already, failed = RPC_GOALS[verb]
        service = self.one(name)
        if service is None:
            return self.act_on_many(verb, self.group(split_namespec(name)[0]),
                                    wait)
        if service.state in skip:
            raise RpcFault(already, name)
        capture = self.command(verb, [service])

        def done():
            if capture.code is None and wait:
                return None
            if service.state in goal or not wait:
                return True
            raise RpcFault(FAULT_ABNORMAL_TERMINATION if service.state ==
                           STARTING else failed,
                           capture.about(service.name) or name)
        return done() if capture.code is not None or not wait else done

    def act_on_many(self, verb, services, wait):
        """The group and "all" calls: one command for those not there yet,
        then a result for each of them."""
        skip, goal, _already, failed = RPC_GOALS[verb]
        chosen = [s for s in services if s.state not in skip]
        capture = self.command(verb, chosen) if chosen else Capture()

        def status_of(service):
            if service.state in goal or not wait:
                return FAULT_SUCCESS, "OK"
            return failed, capture.about(service.name) or "failed"

        def done():
            if chosen and wait and capture.code is None:
                return None
            return self.results(chosen, status_of)
        return done() if not wait or capture.code is not None else done

    def startProcess(self, name, wait=True):
        return self.act("start", name, wait)

    def startProcessGroup(self, name, wait=True):
        return self.act_on_many("start", self.group(name), wait)

    def startAllProcesses(self, wait=True):
        return self.act_on_many("start", self.every(), wait)

    def stopProcess(self, name, wait=True):
        return self.act("stop", name, wait)

    def stopProcessGroup(self, name, wait=True):
        return self.act_on_many("stop", self.group(name), wait)

    def stopAllProcesses(self, wait=True):
        return self.act_on_many("stop", self.every(), wait)

    def signal_number(self, value):
        try:
            return to_signal(str(value))
        except ValueError:
            raise RpcFault(FAULT_BAD_SIGNAL, value)

    def signal_one(self, service, number):
        pid = service.pid
        if not service.send_signal(number):
            raise RpcFault(FAULT_NOT_RUNNING, service.name)
        service.log("sent %s to pid %d on request of an XML-RPC client" % (
            signal_name(number), pid))
        return True

    def signalProcess(self, name, signal_):
        service = self.one(name)
        if service is None:
            return self.signalProcessGroup(split_namespec(name)[0], signal_)
        return self.signal_one(service, self.signal_number(signal_))

    def signal_many(self, services, signal_):
        number = self.signal_number(signal_)
        chosen = [s for s in services if s.state in RUNNING_STATES]

        def status_of(service):
            try:
                self.signal_one(service, number)
            except RpcFault as fault:
                return fault.code, fault.text
            return FAULT_SUCCESS, "OK"
        return self.results(chosen, status_of)

    def signalProcessGroup(self, name, signal_):
        return self.signal_many(self.group(name), signal_)

    def signalAllProcesses(self, signal_):
        return self.signal_many(self.every(), signal_)

    # -- output ------------------------------------------------------------

    def log_of(self, name, stream):
        """(path of its log file or None, the service)."""
        service = self.one(name)
        if service is None:
            raise RpcFault(FAULT_BAD_NAME, name)
        path = log_file_paths(service.config)[stream == "stderr"]
        return path or None, service

    def recent_bytes(self, service, stream):
        """(what the buffer holds of a stream, bytes ever kept): where a
        service's stderr shares stdout's pipe, both streams are "stdout"."""
        recent = service.recent
        stream = pipe_stream(service.config, stream)
        if recent is None:
            return b"", 0
        return recent.data(stream), recent.totals.get(stream, 0)

    def read_file(self, path, offset, length, tail=False):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
                         | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise RpcFault(FAULT_NO_FILE, "%s: %s" % (path, os_error_words(
                exc)))
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise RpcFault(FAULT_NO_FILE, "%s is not a file" % path)
            if tail:
                start, end, overflow = tail_range(info.st_size, offset,
                                                  length)
            else:
                start, end = log_range(info.st_size, offset, length)
            end = min(end, start + RPC_READ_MAX)
            data = os.pread(fd, end - start, start) if end > start else b""
        except OSError:
            raise RpcFault(FAULT_FAILED, path)
        finally:
            os.close(fd)
        if tail:
            return [xml_text(data), info.st_size, overflow]
        return xml_text(data)

    def read_log(self, name, offset, length, stream, tail=False):
        for value in (offset, length):
            if not isinstance(value, int) or isinstance(value, bool):
                raise RpcFault(FAULT_INCORRECT_PARAMETERS,
                               "offset and length are integers")
        path, service = self.log_of(name, stream)
        if path is not None and os.path.exists(path):
            return self.read_file(path, offset, length, tail)
        data, total = self.recent_bytes(service, stream)
        base = total - len(data)  # the buffer holds [base, total)
        if tail:
            start, end, overflow = tail_range(total, offset, length)
        else:
            start, end = log_range(total, offset, length)
        chunk = data[max(0, start - base):max(0, end - base)]
        return [xml_text(chunk), total, overflow] if tail else \
            xml_text(chunk)

    def readProcessStdoutLog(self, name, offset, length):
        return self.read_log(name, offset, length, "stdout")

    def readProcessStderrLog(self, name, offset, length):
        return self.read_log(name, offset, length, "stderr")

    def clear_logs(self, service):
        """Empty its log files (kept open: O_APPEND writes go on at the
        new end) and its recent output, as supervisorctl clear asks."""
        for pipe in service.outputs or ():
            dest = getattr(pipe, "dest", None)
            if getattr(dest, "fd", -1) >= 0:
                try:
                    os.ftruncate(dest.fd, 0)
                except OSError as exc:
                    raise RpcFault(FAULT_FAILED, "%s: %s" % (
                        dest.path, os_error_words(exc)))
                dest.size, dest.began = 0, None
        service.recent = None
        service.log("log files and recent output cleared on request of an "
                    "XML-RPC client")
        return True

    def clearProcessLogs(self, name):
        service = self.one(name)
        if service is None:
            raise RpcFault(FAULT_BAD_NAME, name)
        return self.clear_logs(service)

    def clearAllProcessLogs(self):
        def status_of(service):
            try:
                self.clear_logs(service)
            except RpcFault as fault:
                return fault.code, fault.text
            return FAULT_SUCCESS, "OK"
        return self.results(self.every(), status_of)

    def tailProcessStdoutLog(self, name, offset, length):
        return self.read_log(name, offset, length, "stdout", tail=True)

    def tailProcessStderrLog(self, name, offset, length):
        return self.read_log(name, offset, length, "stderr", tail=True)

    # -- the config: reread, update, add, remove ----------------------------

    def reloadConfig(self):
        supervisor = self.supervisor
        try:
            config = load_config(supervisor.settings.filename,
                                 supervisor.euid)
        except ConfigErrors as exc:
            raise RpcFault(FAULT_CANT_REREAD, "; ".join(
                line[len("fcgiwatch: "):] for line in exc.lines()))
        for warning in config.warnings:
            supervisor.warn("config: %s" % warning)
        old = groups_of(supervisor.config)
        new = groups_of(config)
        added = sorted(g for g in new if g not in old)
        removed = sorted(g for g in old if g not in new)
        changed = sorted(g for g in new if g in old and new[g] != old[g])
        self.pending = (config, added, changed, removed)
        self.applied = False
        return [[added, changed, removed]]

    def apply_pending(self):
        if not self.applied:
            self.applied = True
            code, lines, _waits = self.supervisor.apply(
                self.pending[0], "update (an XML-RPC client)")
            if code:
                raise RpcFault(FAULT_FAILED, "; ".join(lines))

    def addProcessGroup(self, name):
        if not isinstance(name, str):
            raise RpcFault(FAULT_BAD_NAME, name)
        pending = self.pending
        if pending is None or name not in pending[1] + pending[2]:
            _found, members = self.table()
            raise RpcFault(FAULT_ALREADY_ADDED if name in members
                           else FAULT_BAD_NAME, name)
        self.apply_pending()
        for part in (pending[1], pending[2]):
            if name in part:
                part.remove(name)
        now = self.supervisor.clock()
        for service in self.table()[1].get(name, ()):
            if service.config.autostart and service.state in (DOWN, FATAL):
                self.supervisor.orders.give([service], "up")
                service.on_want_up(now)
        return True

    def removeProcessGroup(self, name):
        members = self.group(name)
        if any(s.state in RUNNING_STATES for s in members):
            raise RpcFault(FAULT_STILL_RUNNING, name)
        pending = self.pending
        if pending is None or name not in pending[2] + pending[3]:
            raise RpcFault(FAULT_FAILED, "fcgiwatch runs what its config "
                           "says: take %s out of the file, then update" % name)
        # Removed and added again, as supervisord does: what the operator
        # said of the old group is forgotten.
        for service in members:
            self.supervisor.orders.give([service], "up" if
                                        service.config.autostart else "down")
        self.apply_pending()
        if name in pending[3]:
            pending[3].remove(name)
        return True

    def getAllConfigInfo(self):
        supervisor = self.supervisor
        configs = [(s.config, True) for s in supervisor.services.values()]
        if self.pending is not None and not self.applied:
            configs += [(c, False) for c in self.pending[0].services
                        if c.name not in supervisor.services]
        out = []
        for config, inuse in configs:
            out.append({
                "name": config.name, "group": rpc_group(
                    config, supervisor.config.groups),
                "inuse": inuse, "autostart": config.autostart,
                "group_prio": config.priority,
                "process_prio": config.priority,
                "command": config.command, "directory": config.directory,
                "uid": config.uid, "exitcodes": list(config.exitcodes),
                "startsecs": int(config.startsecs),
                "startretries": config.startretries if isinstance(
                    config.startretries, int) else -1,
                "stopsignal": config.stopsignal,
                "stopwaitsecs": int(config.stopwaitsecs),
                "killasgroup": config.killasgroup,
                "redirect_stderr": config.redirect_stderr,
                "stdout_logfile": config.stdout_logfile,
                "stderr_logfile": config.stderr_logfile})
        for row in out:  # XML-RPC has no None: supervisord says "none"
            row.update((k, "none") for k, v in row.items() if v is None)
        return sorted(out, key=lambda r: r["name"])

    # -- system ------------------------------------------------------------

    def listMethods(self):
        return sorted(RPC_METHODS)

    def methodHelp(self, name):
        if not isinstance(name, str) or name not in RPC_METHODS:
            raise RpcFault(FAULT_BAD_NAME, name)
        return RPC_METHODS[name][0].__doc__ or ""

    def methodSignature(self, name):
        if not isinstance(name, str) or name not in RPC_METHODS:
            raise RpcFault(FAULT_BAD_NAME, name)
        return ["undef"]

    def multicall(self, calls):
        """Each call in turn; one that waits holds the rest back, as in
        supervisord."""
        if not isinstance(calls, list):
            raise RpcFault(FAULT_INCORRECT_PARAMETERS, "a list of calls")
        results, waiting = [], [None]

        def advance():
            if waiting[0] is not None:
                value = self.server.settle(waiting[0])
                if value is None:
                    return None
                results.append(value)
                waiting[0] = None
            while len(results) < len(calls):
                call = calls[len(results)]
                if not isinstance(call, dict) or call.get(
                        "methodName") == "system.multicall":
                    results.append({"faultCode": FAULT_INCORRECT_PARAMETERS,
                                    "faultString": "INCORRECT_PARAMETERS"})
                    continue
                answer = self.server.dispatch(
                    self.caller, call.get("methodName"),
                    call.get("params", []))
                if callable(answer):
                    waiting[0] = answer
                    return None
                results.append(answer if not isinstance(answer, RpcFault)
                               else {"faultCode": answer.code,
                                     "faultString": answer.text})
            return results
        caller = self.caller
        value = advance()
        if value is None:
            def later():
                self.caller = caller
                return advance()
            return later
        return value


#: The methods served: name -> (function, changes something or reads
#: output, so only root, our user or a password holder may call it).
RPC_METHODS = dict(
    [("supervisor." + name, (getattr(RpcApi, name), False)) for name in (
        "getAPIVersion", "getSupervisorVersion", "getIdentification",
        "getState", "getPID", "getProcessInfo", "getAllProcessInfo",
        "getAllConfigInfo")]
    + [("supervisor." + name, (getattr(RpcApi, name), True)) for name in (
        "shutdown", "restart", "readLog", "startProcess", "startProcessGroup",
        "startAllProcesses", "stopProcess", "stopProcessGroup",
        "stopAllProcesses", "signalProcess", "signalProcessGroup",
        "signalAllProcesses", "readProcessStdoutLog",
        "readProcessStderrLog", "tailProcessStdoutLog",
        "tailProcessStderrLog", "clearProcessLogs", "clearAllProcessLogs",
        "reloadConfig", "addProcessGroup",
        "removeProcessGroup")]
    + [("system." + name, (getattr(RpcApi, name), False)) for name in (
        "listMethods", "methodHelp", "methodSignature", "multicall")])
RPC_METHODS["supervisor.getVersion"] = RPC_METHODS[
    "supervisor.getAPIVersion"]
RPC_METHODS["supervisor.readMainLog"] = RPC_METHODS["supervisor.readLog"]
RPC_METHODS["supervisor.readProcessLog"] = RPC_METHODS[
    "supervisor.readProcessStdoutLog"]
RPC_METHODS["supervisor.clearProcessLog"] = RPC_METHODS[
    "supervisor.clearProcessLogs"]


class RpcConnection:
    """One HTTP client: requests read as they come (pipelined, kept
    alive), one answered at a time, each within RPC_REQUEST_TIME of its
    first byte; an answer never waits for the client to read it."""

    def __init__(self, server, sock, uid, auth):
        self.server, self.sock, self.auth = server, sock, auth
        supervisor = server.supervisor
        # Over TCP there is no peer to ask: the password (required there)
        # is what lets a client act.
        self.privileged = uid is None or uid in (0, supervisor.euid)
        self.inbuf = b""
        self.outbuf = b""
        self.waiting = None       # a method's function, until it answers
        self.keep = True
        self.closed = False
        self.lingering = False    # answered for good; reading to EOF
        self.continued = False    # "100 Continue" sent for this request
        self.tail = None          # (service, stream) of a /logtail
        self.lost = 0
        self.deadline = supervisor.clock() + RPC_IDLE
        sock.setblocking(False)
        supervisor.watch(sock.fileno(), EVENT_READ, self.on_event)

    def on_event(self, mask):
        if mask & EVENT_WRITE:
            self.flush()
        if not mask & EVENT_READ or self.closed:
            return
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            return
        if self.tail is not None or self.lingering:
            return  # nothing more to read: a /logtail, a refused request
        if not self.inbuf.strip(b"\r\n"):
            self.deadline = self.server.supervisor.clock() + \
                RPC_REQUEST_TIME
        self.inbuf += data
        if len(self.inbuf) > RPC_HEAD_MAX + RPC_BODY_MAX:
            # Requests sent ahead while one waits: no more than one.
            self.error(413, "Payload Too Large")
            return
        self.serve()

    def serve(self):
        """Answer the whole requests that are here, while none waits; then
        the deadline: a request begun has RPC_REQUEST_TIME from its first
        byte, an idle connection RPC_IDLE."""
        self.serve_requests()
        if self.closed or self.waiting is not None or self.tail is not None \
                or self.lingering:
            return
        if not self.inbuf.strip(b"\r\n"):
            self.deadline = self.server.supervisor.clock() + RPC_IDLE
        elif self.deadline is None:
            self.deadline = self.server.supervisor.clock() + \
                RPC_REQUEST_TIME

    def serve_requests(self):
        while not self.closed and self.waiting is None and \
                self.tail is None and self.keep:
            self.inbuf = self.inbuf.lstrip(b"\r\n")
            end = self.inbuf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.inbuf) > RPC_HEAD_MAX:
                    self.error(431, "Request Header Fields Too Large")
                return
            try:
                method, target, version, headers = parse_http_head(
                    self.inbuf[:end])
                length = int(headers.get("content-length", "0"))
                if length < 0:
                    raise ValueError("negative length")
            except ValueError:
                self.error(400, "Bad Request")
                return
            if "transfer-encoding" in headers:
                self.error(411, "Length Required")
                return
            if length > RPC_BODY_MAX:
                self.error(413, "Payload Too Large")
                return
            if len(self.inbuf) < end + 4 + length:
                if headers.get("expect", "").lower() == "100-continue" \
                        and not self.continued:
                    # curl asks before it sends a body over 1 KiB.
                    self.continued = True
                    self.send(b"HTTP/1.1 100 Continue\r\n\r\n")
                return
            self.continued = False
            body = self.inbuf[end + 4:end + 4 + length]
            self.inbuf = self.inbuf[end + 4 + length:]
            self.keep = headers.get("connection", "").lower() != "close" \
                and (version != "HTTP/1.0" or headers.get(
                    "connection", "").lower() == "keep-alive")
            self.deadline = None
            self.request(method, target, headers, body)

    def request(self, method, target, headers, body):
        if self.auth is not None and not password_matches(
                headers.get("authorization"), self.auth):
            self.respond(401, "Unauthorized", b"Authentication required\n",
                         extra="WWW-Authenticate: Basic realm=\"default\""
                         "\r\n")
            return
        path = target.split("?", 1)[0]
        if method == "POST" and path == "/RPC2":
            self.server.call(self, body)
        elif method == "GET" and path.startswith("/logtail/"):
            self.server.logtail(self, path[len("/logtail/"):])
        elif method == "GET" and path == "/mainlogtail":
            self.server.logtail(self, None)
        else:
            self.respond(404, "Not Found", b"Not found\n")

    def respond(self, code, reason, body, kind="text/plain",
                extra=""):
        head = "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: " \
            "%d\r\n%s%s\r\n" % (code, reason, kind, len(body), extra,
                                "" if self.keep else "Connection: close\r\n")
        self.send(head.encode("latin-1") + body)
        if not self.keep:
            self.finish()

    def error(self, code, reason):
        self.keep = False
        self.respond(code, reason, (reason + "\n").encode())

    def send(self, data):
        if self.closed:
            return
        self.outbuf += data
        if len(self.outbuf) > RPC_OUT_MAX:
            self.close()  # a client that never reads
            return
        self.flush()

    def flush(self):
        while self.outbuf and not self.closed:
            try:
                sent = self.sock.send(self.outbuf)
            except (BlockingIOError, InterruptedError):
                self.server.supervisor.watch(
                    self.sock.fileno(), EVENT_READ | EVENT_WRITE,
                    self.on_event)
                return
            except OSError:
                self.close()
                return
            self.outbuf = self.outbuf[sent:]
        if self.closed:
            return
        if not self.keep and self.tail is None and not self.lingering:
            # Half-close and read to the client's EOF: closing with its
            # unread input (a refused body) would reset the connection
            # and lose the answer.  The deadline bounds the wait.
            try:
                self.sock.shutdown(socket.SHUT_WR)
            except OSError:
                self.close()
                return
            self.lingering = True
            self.deadline = self.server.supervisor.clock() + \
                RPC_REQUEST_TIME
        self.server.supervisor.watch(self.sock.fileno(), EVENT_READ,
                                     self.on_event)

    def finish(self):
        """No more requests: once the answer is out, the end."""
        self.keep = False
        if not self.outbuf:
            self.flush()

    def feed(self, service, data, stream):
        """New output of the service a /logtail follows (service None: our
        own log, for /mainlogtail): one chunk."""
        if stream != self.tail[1]:
            return
        if len(self.outbuf) > FOLLOW_AHEAD:
            self.lost += data.count(b"\n")
            return
        if self.lost:
            data = b"[fcgiwatch: %d lines not shown: this reader fell " \
                b"behind]\n" % self.lost + data
            self.lost = 0
        self.send(b"%x\r\n%s\r\n" % (len(data), data))

    def on_timeout(self):
        self.deadline = None
        if self.inbuf.strip(b"\r\n") and not self.lingering:
            self.error(408, "Request Timeout")
        else:
            self.close()

    def close(self):
        if self.closed:
            return
        self.closed = True
        supervisor = self.server.supervisor
        supervisor.unwatch(self.sock.fileno())
        self.sock.close()
        followers = self.server.main_followers if self.tail is not None \
            and self.tail[0] is None else self.tail[0].followers \
            if self.tail is not None else ()
        if self in followers:
            followers.remove(self)
        if self in self.server.connections:
            self.server.connections.remove(self)


class RpcServer:
    """The listening sockets of [unix_http_server] and [inet_http_server],
    their connections, and the calls still waiting for services."""

    MAX_OPEN = 64
    MAX_UNPRIVILEGED = 16

    def __init__(self, supervisor):
        self.supervisor = supervisor
        self.settings = supervisor.settings.rpc
        self.api = RpcApi(self)
        self.connections = []
        self.main_followers = []  # maintail -f: our own log lines
        self.listeners = []       # (socket, auth, unix path or None)
        self.bound = None         # (st_dev, st_ino) of the socket we bound
        self.accept_again = None
        try:
            self.listen()
        except BaseException:
            self.close()
            raise

    def listen(self):
        settings, euid = self.settings, self.supervisor.euid
        if settings.unix is not None:
            path, mode, uid, gid = settings.unix
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.listeners.append((sock, settings.unix_auth, path))
            try:
                bind_unix(sock, path, mode, (uid, gid), euid,
                          "[unix_http_server] file")
            except (OSError, UnsafePath) as exc:
                raise Failure("[unix_http_server] file %s: %s" % (
                    path, exc if isinstance(exc, UnsafePath) else
                    os_error_words(exc)))
            sock.listen(64)
            self.bound = path_identity(path)
        if settings.inet is not None:
            host, port = settings.inet
            try:
                family, kind, proto, _name, address = socket.getaddrinfo(
                    host, port, 0, socket.SOCK_STREAM)[0]
                sock = socket.socket(family, kind, proto)
                self.listeners.append((sock, settings.inet_auth, None))
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(address)
                sock.listen(64)
            except (OSError, socket.gaierror) as exc:
                raise Failure("[inet_http_server] port %s:%d: %s" % (
                    host, port, os_error_words(exc)))
        for sock, auth, path in self.listeners:
            sock.setblocking(False)
            self.watch(sock, auth, path)

    def watch(self, sock, auth, path):
        self.supervisor.watch(sock.fileno(), EVENT_READ,
                              lambda _mask: self.on_accept(sock, auth, path))

    def on_accept(self, listener, auth, path):
        supervisor = self.supervisor
        try:
            sock, _address = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            supervisor.warn("XML-RPC socket: accept failed: %s; not "
                            "accepting for %d s" % (os_error_words(exc),
                                                    ACCEPT_PAUSE))
            for sock, _auth, _path in self.listeners:
                supervisor.unwatch(sock.fileno())
            self.accept_again = supervisor.clock() + ACCEPT_PAUSE
            return
        uid = None
        if path is not None:
            try:
                uid = peer_credentials(sock)[1]
            except OSError:
                sock.close()
                return
        privileged = uid is None or uid in (0, supervisor.euid)
        mine = [c for c in self.connections if c.privileged == privileged]
        if len(mine) >= (self.MAX_OPEN if privileged
                         else self.MAX_UNPRIVILEGED):
            idle = [c for c in mine if c.waiting is None and c.tail is None]
            if not idle and privileged:
                sock.close()
                return
            (idle or mine)[0].close()
        self.connections.append(RpcConnection(self, sock, uid, auth))

    def deadlines(self):
        times = [c.deadline for c in self.connections
                 if c.deadline is not None]
        if self.accept_again is not None:
            times.append(self.accept_again)
        return times

    def check(self, now):
        if self.accept_again is not None and now >= self.accept_again:
            self.accept_again = None
            for sock, auth, path in self.listeners:
                self.watch(sock, auth, path)
        for connection in list(self.connections):
            if connection.waiting is not None:
                value = self.settle(connection.waiting)
                if value is not None and connection.lingering:
                    connection.waiting = None  # answered already: refused
                elif value is not None:
                    connection.waiting = None
                    self.answer(connection, value)
                    connection.serve()
            elif connection.deadline is not None and \
                    now >= connection.deadline:
                connection.on_timeout()

    def settle(self, waiting):
        """A waiting method's answer (or RpcFault), or None: not yet."""
        try:
            return waiting()
        except RpcFault as fault:
            return fault

    def call(self, connection, body):
        try:
            method, params = parse_xmlrpc_call(body)
        except (ValueError, OverflowError):
            connection.error(400, "Bad Request")
            return
        answer = self.dispatch(connection, method, params)
        if callable(answer):
            connection.waiting = answer
            return
        self.answer(connection, answer)

    def dispatch(self, connection, method, params):
        """One call: its answer, an RpcFault, or a function to wait on."""
        supervisor = self.supervisor
        entry = RPC_METHODS.get(method) if isinstance(method, str) else None
        if entry is None:
            return RpcFault(FAULT_UNKNOWN_METHOD, "UNKNOWN_METHOD")
        function, guarded = entry
        if guarded and not connection.privileged:
            return RpcFault(FAULT_FAILED, who_may_control(supervisor.euid))
        if supervisor.shutting_down and method not in (
                "supervisor.getState", "supervisor.getPID",
                "supervisor.getAPIVersion", "supervisor.getVersion"):
            return RpcFault(FAULT_SHUTDOWN_STATE, "SHUTDOWN_STATE")
        code = function.__code__
        names = code.co_varnames[1:code.co_argcount]
        least = len(names) - len(function.__defaults__ or ())
        if not least <= len(params) <= len(names):
            return RpcFault(FAULT_INCORRECT_PARAMETERS, "INCORRECT_PARAMETERS")
        self.api.caller = connection
        try:
            return function(self.api, *params)
        except RpcFault as fault:
            return fault
        except (TypeError, ValueError) as exc:
            # A value of a type the method cannot take (a list for a
            # name): the caller's mistake, said as supervisord says it.
            return RpcFault(FAULT_INCORRECT_PARAMETERS, str(exc))

    def answer(self, connection, value):
        try:
            body = xmlrpc_response(value)
        except (TypeError, OverflowError) as exc:
            body = xmlrpc_response(RpcFault(
                FAULT_FAILED, "cannot encode the answer: %s" % exc))
        # What a call reports must be what --status reads right after.
        if self.supervisor.status_dirty:
            self.supervisor.disk.write_status()
        connection.respond(200, "OK", body.encode("utf-8"), "text/xml")

    def logtail(self, connection, rest):
        """GET /logtail/NAME[/stdout|stderr]: the last of its output, then
        each new line, chunked, until the client leaves.  rest None:
        /mainlogtail, our own log lines from now on."""
        if not connection.privileged:
            connection.error(403, "Forbidden")
            return
        if rest is None:
            self.stream_to(connection, None, "main", b"")
            self.main_followers.append(connection)
            return
        name, _slash, stream = rest.partition("/")
        from urllib.parse import unquote
        name, stream = unquote(name), stream or "stdout"
        try:
            service = self.api.one(name)
        except RpcFault:
            service = None
        if service is None or stream not in ("stdout", "stderr"):
            connection.error(404, "Not Found")
            return
        stream = pipe_stream(service.config, stream)
        self.stream_to(connection, service, stream, self.api.recent_bytes(
            service, stream)[0][-RPC_TAIL_START:])
        service.followers.append(connection)

    def stream_to(self, connection, service, stream, data):
        """The answer's head, then data: what feed() adds to from now."""
        connection.keep = False
        connection.tail = (service, stream)
        connection.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; "
                        b"charset=utf-8\r\nTransfer-Encoding: chunked\r\n"
                        b"Cache-Control: no-cache\r\n\r\n")
        if data:
            connection.send(b"%x\r\n%s\r\n" % (len(data), data))

    def close(self):
        for connection in list(self.connections):
            connection.close()
        for sock, _auth, path in self.listeners:
            try:
                self.supervisor.unwatch(sock.fileno())
            except (KeyError, ValueError):
                pass
            sock.close()
            # Only while the name is still ours: a reload may have bound
            # it anew, a newer supervisor may own it after a --reexec.
            if path is not None and self.bound is not None and \
                    path_identity(path) == self.bound:
                remove_socket_file(path, self.supervisor.euid)
        self.listeners = []


# ===========================================================================
# Command line
#
# Hand-parsed (argparse costs more to import than --status may take); every
# mistake is one line and exit 2.
# ===========================================================================

Options = namedtuple("Options", ["action", "config", "names", "json",
                                 "signal", "lines", "follow"])

#: Options that choose what to do; the rest modify them.
ACTIONS = {"--daemon": "daemon", "--check": "check", "--status": "status",
           "--start": "start", "--stop": "stop", "--restart": "restart",
           "--signal": "signal", "--reload": "reload", "--tail": "tail",
           "--shutdown": "shutdown", "--reexec": "reexec",
           "--version": "version", "-V": "version", "--help": "help",
           "-h": "help"}

#: Actions that take service names, and whether they need at least one.
NAMED_ACTIONS = {"status": False, "start": True, "stop": True,
                 "restart": True, "signal": True, "tail": True}

#: --tail's lines unless -n says otherwise.
TAIL_LINES = 10


def parse_args(argv):
    """The command line as Options; raises UsageError.

    >>> parse_args(["-c", "x.conf", "--restart", "web"]).names
    ['web']
    """
    action, config, names, as_json, sig = "run", None, [], False, None
    lines, follow = None, False
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg in ("-c", "--config"):
            if not args:
                raise UsageError("%s needs a file name" % arg)
            config = args.pop(0)
        elif arg.startswith("--config="):
            config = arg.split("=", 1)[1]
        elif arg.startswith("-c") and len(arg) > 2:
            config = arg[2:]
        elif arg in ("--json", "--prometheus"):
            wanted = True if arg == "--json" else "prometheus"
            if as_json and as_json != wanted:
                raise UsageError("--json and --prometheus: give one")
            as_json = wanted
        elif arg in ("-f", "--follow"):
            follow = True
        elif arg == "-n" or arg.startswith("-n") and arg[2:].isdigit():
            text = arg[2:] or (args.pop(0) if args else "")
            if not text.isdigit() or not 0 < int(text) <= 100000:
                raise UsageError("-n takes a number of lines, 1 to 100000 "
                                 "(got %r)" % text)
            lines = int(text)
        elif arg == "--resume":  # internal: the second half of --reexec
            if not args:
                raise UsageError("--resume needs the hand-over file")
            if action != "run":
                raise UsageError("--resume stands alone")
            action, names = "resume", [args.pop(0)]
        elif arg in ACTIONS:
            if action != "run":
                raise UsageError("%s and --%s cannot be combined; give one "
                                 "action" % (arg, action))
            action = ACTIONS[arg]
            if action == "signal":
                if not args or args[0].startswith("-"):
                    raise UsageError("--signal needs a signal, e.g. "
                                     "--signal HUP NAME")
                sig = args.pop(0)
                try:
                    to_signal(sig)
                except ValueError as exc:
                    raise UsageError("--signal: %s" % exc)
        elif arg == "--":
            names.extend(args)
            args = []
        elif arg.startswith("-"):
            raise UsageError("unknown option %s" % arg)
        else:
            names.append(arg)
    if action == "resume":
        return Options(action, config, names, as_json, sig, None, False)
    if names and action not in NAMED_ACTIONS:
        raise UsageError("%s takes no service names (got %s)" % (
            "running the supervisor" if action == "run" else "--" + action,
            " ".join(names)))
    if NAMED_ACTIONS.get(action) and not names:
        raise UsageError("--%s needs service names, or all" % action)
    if as_json and action != "status":
        raise UsageError("--json and --prometheus go with --status")
    if (follow or lines is not None) and action != "tail":
        raise UsageError("-f and -n go with --tail")
    if action == "tail" and ("all" in names or len(names) > 1):
        raise UsageError("--tail takes one service, pool or group")
    for name in names:
        group, colon, member = name.partition(":")
        if name != "all" and not SERVICE_NAME_RE.match(name) and not (
                colon and SERVICE_NAME_RE.match(group) and (
                    member == "*" or SERVICE_NAME_RE.match(member))):
            raise UsageError("%r is not a service name (or GROUP:NAME, "
                             "GROUP:*)" % name)
    if "all" in names and action == "status":
        raise UsageError("--status lists every service without names; "
                         "leave out all")
    if "all" in names and len(names) > 1:
        raise UsageError("all stands alone: --%s all, or name the services"
                         % action)
    return Options(action, config, names, as_json, sig,
                   TAIL_LINES if lines is None else lines, follow)


def find_config(given):
    """The config path: -c, $FCGIWATCH_CONFIG, beside us, /etc."""
    if given:
        return os.path.abspath(given)
    tried = []
    for candidate in (os.environ.get("FCGIWATCH_CONFIG"),
                      os.path.join(os.path.dirname(os.path.abspath(
                          __file__)), "fcgiwatch.conf"),
                      "/etc/fcgiwatch.conf"):
        if not candidate:
            continue
        if os.path.exists(candidate):
            return os.path.abspath(candidate)
        tried.append(candidate)
    raise UsageError("no config file found (tried %s); give one with -c FILE"
                     % ", ".join(tried))


def configured_value(text, section, key):
    """One key of one section as configparser reads it (continuation
    lines joined by newlines), or None.

    A tolerant scan, not a parse: clients need only a value or two, also
    while the rest of the file is broken, and --status should not pay for
    importing configparser.

    >>> configured_value("[a]\\nstate_dir=x\\n[fcgiwatch]\\n"
    ...                  "; c\\nState_Dir : /s\\n", "fcgiwatch", "state_dir")
    '/s'
    >>> configured_value("[include]\\nfiles = a.conf ; c\\n  b.conf\\n"
    ...                  "# c\\nx = 1\\n", "include", "files")
    'a.conf\\nb.conf'
    """
    current, value, ours = None, None, False
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            continue  # blank or a comment
        if line[0] not in " \t" and stripped.startswith("[") and \
                "]" in stripped:
            current, ours = stripped[1:stripped.rindex("]")], False
            continue
        # A ';' or '#' after white space starts a comment.
        words = re.split(r"\s[;#]", stripped)[0].strip()
        if line[0] in " \t":
            if ours and words:
                value += "\n" + words  # the value goes on
            continue
        cut = min(i for i in (words.find("="), words.find(":"), len(words))
                  if i >= 0)
        ours = current == section and words[:cut].strip().lower() == key
        if ours:
            value = words[cut + 1:].strip()
    return value


def configured_state_dir(config_path):
    """[fcgiwatch] state_dir as the supervisor reads it, or None: in the
    file or in one it includes, where the last one read counts, and, when
    relative, relative to the main file's directory.  Raises ConfigErrors
    when the main file cannot be read; an included one that cannot is
    passed over (the supervisor would not have started: nothing to find)."""
    seen = set()

    def last_value(path, depth):
        seen.add(path)
        try:
            text = read_config_file(path)
        except ConfigErrors:
            if depth == 0:
                raise
            return None
        value = configured_value(text, OWN_SECTION, "state_dir")
        patterns = configured_value(text, "include", "files") or ""
        for included in included_files(patterns, path):
            if included not in seen and depth < INCLUDE_DEPTH:
                value = last_value(included, depth + 1) or value
        return value
    value = last_value(os.path.abspath(config_path), 0)
    if not value:
        return None
    return os.path.normpath(os.path.join(
        os.path.dirname(os.path.abspath(config_path)),
        os.path.expanduser(value)))


def find_state_dir(config_path):
    """The state_dir a client should look in, without needing a valid
    config (so --stop works while the file is being edited)."""
    value = configured_state_dir(config_path)
    if value:
        return value
    # Unset: the default depends on the supervisor's user, which may not be
    # ours (anyone may read --status): take the one serving this config.
    euid = os.geteuid()
    candidates = [default_state_dir(euid)]
    if euid != 0:
        candidates.append(default_state_dir(0))
    for candidate in candidates:
        doc = read_status_file(candidate)
        if doc and doc.get("supervisor", {}).get("config") == config_path:
            return candidate
    return candidates[0]


def describe_config(config):
    """--check: each service as it would run, and what will fail when it
    starts (tried as its user: warnings, as a start would meet them)."""
    import shlex
    import resource
    count = len(config.services)
    lines = ["config %s: %d service%s; state_dir %s" % (
        config.globals.filename, count, "" if count == 1 else "s",
        config.globals.state_dir)]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = max(config.globals.minfds or 0, fds_needed(config))
    lines.append("open files: %d needed (two a pipe for each service's "
                 "output, one each held or notify socket, %d of its own); "
                 "the limit here is %s, hard %s%s" % (
                     needed, FDS_OWN, "unlimited" if soft < 0 else soft,
                     "unlimited" if hard < 0 else hard,
                     "" if soft < 0 or soft >= needed else
                     ": raised to %d at start" % needed if hard < 0 or
                     hard >= needed or os.geteuid() == 0 else
                     ": only %d can be had, and services past that back off "
                     "(raise the hard limit as root)" % hard))
    settings = config.globals
    orders, problem, _damaged = read_orders(
        settings.data_dir, settings.state_dir, os.geteuid())
    orders = dict((name, order) for name, order in orders.items()
                  if name in set(s.name for s in config.services))
    lines.append("standing orders (--stop, --start): %s in %s" % (
        ", ".join("%s %s" % item for item in sorted(orders.items()))
        or "none", os.path.join(settings.data_dir, orders_file_name(
            settings.state_dir))))
    if any(s.depends_on for s in config.services):
        lines.append("start order: %s" % ", ".join(start_order(
            config.services)))
    rpc = settings.rpc
    if rpc is not None and rpc.unix is not None:
        path, mode, uid, gid = rpc.unix
        lines.append("supervisorctl and XML-RPC: %s (mode %04o, %s:%s%s)" % (
            path, mode, user_label(uid), group_label(gid),
            ", password" if rpc.unix_auth else ""))
    if rpc is not None and rpc.inet is not None:
        lines.append("XML-RPC over TCP: %s:%d (password)" % rpc.inet)
    warnings = [problem] if problem else []
    pipes = sum(1 if stderr_follows_stdout(s) else 2 for s in config.services)
    problem = pipe_budget_problem(pipes, os.geteuid())
    if problem:
        warnings.append(problem)
    for service in config.services:
        where = "%s [%s]" % (service_file(config, service), service.section)
        warnings.extend("%s %s: %s" % (where, key, problem)
                        for key, problem in start_problems(service))
        if service.uid is None:
            who = "%s (the supervisor's user, unchanged)" % service.user
        else:
            who = "%s (uid %d, gid %d, groups %s)" % (
                service.user, service.uid, service.gid,
                ",".join(str(g) for g in service.groups) or "none")
        ready = "ran startsecs (%s)" % format_seconds(service.startsecs)
        if service.ready == "notify":
            ready = "says READY=1 on NOTIFY_SOCKET%s" % (
                " within %s" % format_seconds(service.startsecs)
                if service.startsecs else "")
            if service.watchdog_secs:
                ready += ", WATCHDOG=1 every %s" % format_seconds(
                    service.watchdog_secs)
        lines.append("%s: %s" % (service.name, " ".join(
            shlex.quote(a) for a in service.argv)))
        lines.append("  argv      %r" % (list(service.argv),))
        lines.append("  user      %s" % who)
        lines.append("  directory %s" % service.directory)
        lines.append("  output    stdout %s, stderr %s" % (
            service.stdout_logfile, service.stderr_logfile))
        lines.append("  start     %s, priority %d, autorestart %s" % (
            "at once" if service.autostart else "on request (autostart "
            "false)", service.priority, service.autorestart))
        lines.append("  ready     when it %s" % ready)
        if service.depends_on:
            many = len(service.depends_on) > 1
            lines.append("  depends   on %s: starts once %s ready%s" % (
                ", ".join(service.depends_on),
                "they are" if many else "it is",
                "; restarts when %s a new run, ready" % (
                    "one has" if many else "it has")
                if service.dependency_restart else ""))
        lines.append("  stop      %s, KILL after %s" % (
            signal_name(service.stopsignal),
            format_seconds(service.stopwaitsecs)))
        if service.socket and service.socket_pass == "systemd":
            lines.append("  socket    %s, passed as fd%s %s with LISTEN_FDS "
                         "(systemd's socket activation)" % (
                             ", ".join(e.url for e in service.socket),
                             "s" if len(service.socket) > 1 else "",
                             ", ".join("%d" % (3 + n) for n in range(
                                 len(service.socket)))))
        elif service.socket:
            lines.append("  socket    %s, passed as fd 0 (stdin)"
                         % service.socket[0].url)
        if service.healthcheck is not None:
            lines.append("  health    %s every %s" % (
                service.healthcheck.url,
                format_seconds(service.healthcheck_interval)))
        if service.environment_file:
            lines.append("  env file  %s, read at each start"
                         % service.environment_file)
        if service.limits:
            lines.append("  limits    %s" % ", ".join(
                "%s=%s" % (name, "unlimited" if value < 0 else value)
                for name, value in service.limits))
        if service.max_memory:
            lines.append("  memory    restarted over %s" % format_bytes(
                service.max_memory))
    return ["warning: %s" % w for w in warnings] + lines


def service_file(config, service):
    """The file that holds a service's section (for messages)."""
    return dict(config.files).get(service.section, config.globals.filename)


def start_problems(config):
    """What will fail when this service starts, tried as its user as far
    as that can be done without starting it: (key, why) pairs.  The
    program must be found in PATH and executable by the user, the
    directory reachable by the user, the environment_file readable by the
    user and safe (read_environment_file)."""
    identity = None
    if config.uid is not None and os.geteuid() == 0:
        identity = (config.uid, config.gid, config.groups)

    def access(path, mode):
        return with_identity(identity, lambda: os.access(
            path, mode, effective_ids=True))
    problems = []
    user = "user %s" % config.user
    path = dict(config.env).get("PATH", DEFAULT_PATH)
    candidates = program_candidates(config.argv[0], path)
    where = [os.path.join(config.directory, p) for p in candidates]
    existing = [p for p in where if os.path.exists(p)]
    if not existing:
        problems.append(("command", "%s %s: the service will not start" % (
            config.argv[0], "does not exist" if "/" in config.argv[0]
            else "is not in PATH (%s)" % path)))
    elif not any(access(p, os.X_OK) for p in existing):
        problems.append(("command", "%s is not executable by %s: the "
                         "service will not start" % (existing[0], user)))
    if not access(config.directory, os.X_OK):
        problems.append(("directory", "%s cannot be entered by %s: the "
                         "service will not start" % (config.directory,
                                                     user)))
    if config.environment_file:
        try:
            read_environment_file(config.environment_file, identity,
                                  os.geteuid())
        except ValueError as exc:
            problems.append(("environment_file", "%s: the service will not "
                             "start" % exc))
    return problems


def boot_command(args):
    """(argv, directory) that run this file as the long-running supervisor:
    python3 -E -S -m fcgiwatch ARGS from the file's directory, which ps
    shows as such, and which loads the bytecode Python caches beside the
    file (compiled once, at the first start).  -E -S: the supervisor needs
    nothing from site-packages or PYTHON* variables, and a .pth file there
    can cost megabytes in every fork.  Where the directory is not ours to
    write and holds no cache, Python 3.8+ caches in ~/.cache/fcgiwatch."""
    directory, name = os.path.split(PROGRAM_PATH)
    module = name[:-3] if name.endswith(".py") else ""
    argv = [sys.executable, "-E", "-S"]
    if not module.isidentifier():
        return argv + ["-c", BOOT, PROGRAM_PATH] + list(args), None
    cached = forget_stale_bytecode()
    if sys.version_info >= (3, 8) and not os.access(directory, os.W_OK) \
            and not (cached and os.path.exists(cached)):
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(
            os.path.expanduser("~"), ".cache")
        argv += ["-X", "pycache_prefix=" + os.path.join(cache, "fcgiwatch")]
    return argv + ["-m", module] + list(args), directory


def forget_stale_bytecode():
    """Remove this file's cached bytecode when it is older than the file.

    Python checks a cache against the source's mtime in whole seconds and
    its size: a file replaced within the second of the last compile, by
    one of the same size (a version bump), would load the old code.
    Returns the cache's path (or None without one)."""
    try:
        from importlib.util import cache_from_source
        cached = cache_from_source(PROGRAM_PATH)
        if os.stat(cached).st_mtime_ns <= os.stat(PROGRAM_PATH).st_mtime_ns:
            os.unlink(cached)
        return cached
    except (ImportError, NotImplementedError, ValueError, OSError):
        return None


def boot_exec(argv, directory):
    """exec argv in directory, telling the new program where we were."""
    if directory is None:
        os.execv(argv[0], argv)
    try:
        cwd = os.getcwd()
    except OSError:
        cwd = "/"
    os.environ[BOOT_CWD] = cwd
    try:
        os.chdir(directory)
        os.execv(argv[0], argv)
    except OSError:
        os.environ.pop(BOOT_CWD, None)
        os.chdir(cwd)
        raise


def finish_boot():
    """In the booted program: back to the caller's directory, and drop the
    program's directory from the module path (all we import later is the
    standard library: nothing there may shadow it)."""
    cwd = os.environ.pop(BOOT_CWD, None)
    if cwd is None:
        return
    try:
        os.chdir(cwd)
    except OSError:
        os.chdir("/")
    if sys.path and sys.path[0] in ("", os.path.dirname(PROGRAM_PATH)):
        del sys.path[0]


def run_foreground(config):
    supervisor = Supervisor(config, foreground=True)
    try:
        supervisor.start()
    except Failure as exc:
        sys.stderr.write("fcgiwatch: %s\n" % exc)
        return EXIT_FAIL
    return supervisor.run()


def run_resume(config_path, state_path):
    """The new program after --reexec: take the hand-over and carry on.

    The --check that came first makes failure here unlikely; if it happens,
    the services keep running and the next start takes them over."""
    import json
    try:
        with open(state_path) as handle:
            state = json.load(handle)
        os.unlink(state_path)
        config = load_config(config_path)
    except (OSError, ValueError, ConfigErrors) as exc:
        sys.stderr.write("fcgiwatch: cannot resume after re-exec: %s; the "
                         "services run on: start fcgiwatch again to take "
                         "them over\n" % exc)
        return EXIT_FAIL
    supervisor = Supervisor(config, foreground=state["foreground"])
    supervisor.handover.resume(state)
    return supervisor.run()


def reexec_command(state_dir):
    """--reexec: ask, then wait until the new program writes its status."""
    before = (read_status_file(state_dir) or {}).get("supervisor", {})
    code = send_command(state_dir, {"cmd": "reexec", "names": []})
    if code != EXIT_OK:
        return code
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        after = (read_status_file(state_dir) or {}).get("supervisor", {})
        if after.get("generation", 0) > before.get("generation", 0):
            sys.stdout.write("fcgiwatch: re-executed (pid %s), version %s; "
                             "services kept running\n" % (
                                 after.get("pid"), after.get("version")))
            return EXIT_OK
        time.sleep(0.02)
    sys.stderr.write("fcgiwatch: the new program did not report within 30 "
                     "seconds; see the log and --status\n")
    return EXIT_FAIL


def run_daemon(config):
    """--daemon: detach, and return once the supervisor runs (or failed).

    The grandchild reports through a pipe: "ok PID", "running PID" when
    another supervisor holds the state_dir, or "fail TEXT".
    """
    state_dir = config.globals.state_dir
    pid = supervisor_pid(state_dir)
    if pid is not None:
        sys.stdout.write("fcgiwatch: already running (pid %d)\n" % pid)
        return EXIT_OK
    sys.stdout.flush()
    sys.stderr.flush()
    ready_read, ready_write = os.pipe()
    first = os.fork()
    if first == 0:
        code = 1
        try:
            os.close(ready_read)
            os.setsid()
            if os.fork() == 0:
                code = daemon_main(config, ready_write)
            else:
                code = 0
        finally:
            os._exit(code)
    os.close(ready_write)
    os.waitpid(first, 0)
    data = b""
    with os.fdopen(ready_read, "rb") as handle:
        data = handle.read()
    word, _sep, rest = data.decode("utf-8", "replace").strip().partition(" ")
    if word == "ok":
        sys.stdout.write("fcgiwatch: started (pid %s)\n" % rest)
        return EXIT_OK
    if word == "running":
        sys.stdout.write("fcgiwatch: already running (pid %s)\n" % rest)
        return EXIT_OK
    sys.stderr.write("fcgiwatch: %s\n" % (
        rest or "the supervisor exited during start-up; see syslog"))
    return EXIT_FAIL


def daemon_main(config, ready_write):
    """The detached supervisor: cwd /, stdio on /dev/null."""
    def report(text):
        try:
            os.write(ready_write, text.encode("utf-8", "replace"))
        except OSError:
            pass
        os.close(ready_write)

    try:
        os.chdir("/")
        os.umask(0o022)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)
        supervisor = Supervisor(config, foreground=False)
        try:
            supervisor.start()
        except AlreadyRunning as exc:
            report("running %s" % exc.pid)
            return EXIT_OK
        except Failure as exc:
            report("fail %s" % exc)
            return EXIT_FAIL
        report("ok %d" % supervisor.pid)
        return supervisor.run()
    except BaseException as exc:  # never let a daemon die silently
        report("fail internal error: %r" % exc)
        return EXIT_FAIL


def main(argv=None):
    finish_boot()
    argv = sys.argv[1:] if argv is None else argv
    try:
        options = parse_args(argv)
    except UsageError as exc:
        sys.stderr.write("fcgiwatch: %s; see --help\n" % exc)
        return EXIT_USAGE
    if options.action == "help":
        sys.stdout.write(USAGE)
        return EXIT_OK
    if options.action == "version":
        sys.stdout.write("fcgiwatch %s\n" % VERSION)
        return EXIT_OK
    if options.action in ("run", "daemon") and sys.executable and (
            __spec__ is None or not sys.flags.no_site):
        # Run as a script, or with site-packages: start again as a module
        # (see boot_command), same pid.
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            boot_exec(*boot_command(argv))
        except OSError:
            pass  # carry on as we are: only memory is at stake
    try:
        config_path = find_config(options.config)
        if options.action in ("run", "daemon", "check"):
            config = load_config(config_path)
            if options.action == "check":
                sys.stdout.write("".join("warning: %s\n" % w
                                         for w in config.warnings))
                sys.stdout.write("\n".join(describe_config(config)) + "\n")
                return EXIT_OK
            if options.action == "daemon":
                return run_daemon(config)
            return run_foreground(config)
        if options.action == "resume":
            return run_resume(config_path, options.names[0])
        state_dir = find_state_dir(config_path)
        if options.action == "status":
            return show_status(state_dir, options.names, options.json)
        if options.action == "reexec":
            return reexec_command(state_dir)
        request = {"cmd": options.action, "names": options.names}
        if options.signal is not None:
            request["signal"] = options.signal
        if options.action == "tail":
            request.update(lines=options.lines, follow=options.follow)
        return send_command(state_dir, request)
    except UsageError as exc:
        sys.stderr.write("fcgiwatch: %s\n" % exc)
        return EXIT_USAGE
    except ConfigErrors as exc:
        sys.stderr.write("\n".join(exc.lines()) + "\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
