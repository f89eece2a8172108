"""Passes TensorFlow's native log lines on to the terminal, but those known not to concern the run.

Run by runtime/console.py as its own process (its standard input the pipe that the main process's file
descriptor 2 writes into; its standard error the terminal), so that a native message written just
before a crash still arrives. The lines held back go to the log file that a control line names
(`CONTROL_PREFIX + path`), and until one does, into memory.
"""
import os
import re
import signal
import sys

CONTROL_PREFIX = b'\0log file: '
# absl's note before its initialization, every native INFO line, and warnings and errors that a CPU run
# of this project always provokes: CUDA probing, tensorpack's graph edits and its input queue's shutdown,
# the TFLite converter's notes on options it ignores
HELD_BACK = re.compile(
    rb'^(WARNING: All log messages before absl::InitializeLog\(\)'
    rb'|I\d{4} [\d:.]+ +\d+ \S+:\d+\] '
    rb'|W\d{4} [\d:.]+ +\d+ (c_api|local_rendezvous|queue_base|tf_tfl_flatbuffer_helpers)\.cc:\d+\] '
    rb'|E\d{4} [\d:.]+ +\d+ cuda_\w+\.cc:\d+\] failed call to cuInit)')
CONTINUATION = re.compile(rb'^\s')
MEMORY_LINES = 10000    # held-back lines kept while no log file is named


class Router:
    """Routes complete lines: to the terminal (file descriptor 2), or held back (log file or memory)."""

    def __init__(self):
        self.log_file = None
        self.held = []
        self.holding = False     # the last line was held back: its continuation lines are too

    def route(self, line):
        if line.startswith(CONTROL_PREFIX):
            self.open_log(line[len(CONTROL_PREFIX):].strip())
        elif HELD_BACK.match(line) or (self.holding and CONTINUATION.match(line)):
            self.holding = True
            self.hold(line)
        else:
            self.holding = False
            os.write(2, line)

    def hold(self, line):
        if self.log_file:
            self.log_file.write(line)
            self.log_file.flush()
        elif len(self.held) < MEMORY_LINES:
            self.held.append(line)

    def open_log(self, path):
        try:
            self.log_file = open(path, 'ab')
        except OSError:
            return
        self.log_file.writelines(self.held)
        self.log_file.flush()
        self.held = []


def main():
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)   # it ends when every writer has closed the pipe
    router, pending = Router(), b''
    while True:
        chunk = os.read(0, 65536)
        if not chunk:
            break
        lines = (pending + chunk).split(b'\n')
        pending = lines.pop()
        for line in lines:
            router.route(line + b'\n')
    if pending:
        router.route(pending)


if __name__ == '__main__':
    sys.exit(main())
