"""What the terminal shows: results on stdout; on stderr, progress bars, warnings and errors, and with
`--verbose` every log line. Training's log file (LOGDIR/log.log) keeps every line either way.

TensorFlow's C++ code writes its messages to file descriptor 2 itself. Unless `--verbose`,
`route_native_logs` (called before TensorFlow is imported) sends them through
runtime/native_log_router.py, which holds back those that do not concern the run (start-up notes,
CUDA probing on a CPU machine) and passes the rest on. No module here imports TensorFlow.
"""
import logging
import os
import sys

from runtime.native_log_router import CONTROL_PREFIX

ROUTER = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'native_log_router.py')
LONGEST_LINE = 300       # characters of a log message on the terminal; the log file keeps it whole
# tensorpack's notes that do not concern a run of this project: the workers set their death signal
# themselves (runtime/workers.py), and fork before TensorFlow runs anything
TENSORPACK_NOISE = ('"import prctl" failed', "Starting a process with 'fork' method")


def verbose_requested(argv):
    """Whether the command line asks for every log line (read before the flags are parsed)."""
    return '--verbose' in argv


def route_native_logs():
    """Send file descriptor 2 through the router process; Python's own stderr keeps the terminal."""
    read_end, write_end = os.pipe()
    terminal = os.dup(2)
    child = os.fork()
    if child == 0:
        start_router(read_end)
    os.waitpid(child, 0)
    os.close(read_end)
    os.dup2(write_end, 2)
    os.close(write_end)
    sys.stderr = os.fdopen(terminal, 'w', buffering=1, errors='backslashreplace')


def start_router(read_end):
    """In a child: fork the router (so that it is no process's child: it outlives the main process
    just long enough to pass on its last messages) and end."""
    if os.fork() == 0:
        os.dup2(read_end, 0)
        os.execv(sys.executable, [sys.executable, '-S', ROUTER])
    os._exit(0)


def log_native_messages_to(path):
    """Have the router write the messages it holds back to the log file `path` (if it runs)."""
    try:
        routed = os.fstat(2).st_ino != os.fstat(sys.stderr.fileno()).st_ino
    except (AttributeError, OSError, ValueError):    # stderr is no file here (a test capturing it)
        return
    if not routed:
        return
    os.write(2, CONTROL_PREFIX + os.fsencode(os.path.abspath(path)) + b'\n')


class DropNoise(logging.Filter):
    """Drops tensorpack's notes that do not concern the run."""

    def filter(self, record):
        try:
            message = record.getMessage()
        except (TypeError, ValueError):   # print-style arguments (tensorpack's "Training failed at global_step=")
            record.msg, record.args = ' '.join(str(part) for part in (record.msg,) + tuple(record.args)), ()
            message = record.msg
        return not any(noise in message for noise in TENSORPACK_NOISE)


class ShortLines(logging.Formatter):
    """tensorpack's format, with a message over LONGEST_LINE characters cut short."""

    def __init__(self, formatter):
        super().__init__()
        self.formatter = formatter

    def format(self, record):
        text = self.formatter.format(record)
        if len(text) <= LONGEST_LINE:
            return text
        return text[:LONGEST_LINE - 40] + ' ... ({} characters in all)'.format(len(text))


def configure(verbose):
    """tensorpack's log to stderr (every line with `verbose`, else warnings and errors, long ones cut),
    TensorFlow's Python log and Python's warnings into it. Each call sets all of it anew (a process may
    run main.main more than once, as the tests do)."""
    tensorpack_log = logging.getLogger('tensorpack')
    for handler in tensorpack_log.handlers:
        if type(handler) is logging.StreamHandler:
            terminal_only(handler, verbose)
    logging.captureWarnings(True)
    for name in ('tensorflow', 'py.warnings'):
        logger = logging.getLogger(name)
        logger.handlers = []
        logger.propagate = False
        logger.addHandler(ForwardTo(tensorpack_log))


def terminal_only(handler, verbose):
    """The terminal handler's stream (today's stderr: the one it had may be closed), level, filter and format."""
    handler.stream = sys.stderr
    plain = handler.formatter.formatter if isinstance(handler.formatter, ShortLines) else handler.formatter
    handler.setLevel(logging.NOTSET if verbose else logging.WARNING)
    handler.filters = [] if verbose else [DropNoise()]
    handler.setFormatter(plain if verbose else ShortLines(plain))


class ForwardTo(logging.Handler):
    """Hands records to another logger: its handlers (terminal, log file) and their levels decide."""

    def __init__(self, logger):
        super().__init__()
        self.logger = logger

    def emit(self, record):
        record.levelno, record.levelname = logging.INFO, 'INFO'
        self.logger.handle(record)
