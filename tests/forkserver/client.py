"""``python client.py <module> <args>``: ``python -m <module> <args>`` run by the tests' fork server.

Standard library only (and ``server.py``'s message framing), so that it starts in tens of milliseconds.
Hands the fork server (its socket in ``BINDSPACE_TEST_FORKSERVER``) this process's argv, environment,
working directory and standard streams, forwards the signals it receives to the command, and exits as the
command did (its code, or killed by its signal). Without a server, or when the server answers that this run
needs a fresh interpreter (see ``server.py``), it becomes ``python -m <module> <args>`` itself (``os.execv``).
"""

import json
import os
import signal
import socket
import struct
import sys

from server import receive  # this script's folder is sys.path[0]; server.py imports only the standard library

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGQUIT)


def _fresh() -> None:
    os.execv(sys.executable, [sys.executable, "-m", *sys.argv[1:]])


def main() -> None:
    path = os.environ.get("BINDSPACE_TEST_FORKSERVER")
    if not path or path == "0" or len(sys.argv) < 2:
        _fresh()
    command: list[int] = []  # its pid, once known
    pending: list[int] = []  # signals received before it: forwarded when it starts

    def forward(sig: int, _frame) -> None:
        if command:
            os.kill(command[0], sig)
        else:
            pending.append(sig)

    for sig in FORWARDED:
        signal.signal(sig, forward)
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
        data = json.dumps({"argv": sys.argv[1:], "env": dict(os.environ), "cwd": os.getcwd()}).encode()
        socket.send_fds(conn, [struct.pack("!I", len(data))], [0, 1, 2])
        conn.sendall(data)
        reply = receive(conn)
    except (OSError, EOFError):  # no server (it was stopped, or never started): a fresh interpreter
        conn.close()
        _fresh()
    if reply.get("fallback"):
        conn.close()
        for sig in FORWARDED:
            signal.signal(sig, signal.SIG_DFL)
        for sig in pending:
            os.kill(os.getpid(), sig)  # what a fresh interpreter, not started yet, would have died of
        _fresh()
    command.append(reply["pid"])
    for sig in pending:
        os.kill(command[0], sig)
    try:
        status = receive(conn)["status"]
    except EOFError:  # the server was killed under the command
        os._exit(1)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig in FORWARDED:
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    os._exit(os.waitstatus_to_exitcode(status))


if __name__ == "__main__":
    main()
