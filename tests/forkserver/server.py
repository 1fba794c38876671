"""A fork server for the tests' command-line runs: torch, Lightning and Hydra imported once, each run forked.

A fresh interpreter spends 8-20 s here importing torch, Lightning (with torchmetrics, torchvision and
transformers behind it) and Hydra before a ``bindspace-*`` command does anything, and the test suite starts
many. This server imports them once; :mod:`client` (a stdlib-only script, ~30 ms to start) hands it
its argv, environment, working directory and standard streams, and the server forks a process that runs
``python -m <module> <args>`` in them: a separate process with its own pid, exit code and signals, whose
``__main__`` is the command's module. Lightning's DDP launcher starts the other ranks from it as
``python -m <module>``; in a forked run that goes through the client too, so they are forked here as well.

What differs from a fresh interpreter, and is kept out of this path (the client falls back to one):
- import-time output (a library's warning at import is printed once, by the server): tests of a command's
  start-up noise launch ``python -m`` themselves;
- the ``PYTHON*`` environment (``PYTHONPATH``, ``PYTHONHASHSEED``, ``PYTHONWARNINGS``...), read at start-up:
  a run whose ``PYTHON*`` variables differ from the server's gets a fresh interpreter, except for
  ``PYTHONPATH`` directories that hold only a ``sitecustomize.py`` (the fault-injection shim of
  ``tests/kill_shim``), whose import the forked run replays;
- str hashing: every forked run shares the server's hash seed (a test that needs a different seed per run
  must start fresh interpreters).

Protocol (one connection per run): the client sends a length-prefixed JSON request ``{"argv", "env", "cwd"}``
with its fds 0, 1, 2 (SCM_RIGHTS). A monitor process (forked per request) answers ``{"fallback": true}``
or forks the command and answers ``{"pid": N}``, then ``{"status": <waitpid status>}`` when it exits. If
the client goes away first (killed: a test's timeout), the monitor SIGKILLs the command.

Usage: ``python server.py <socket path> <module to import> ... [!<module not to import> ...]``. A module with
per-process state made at import (wandb creates its media temp dir then, and the first run to exit would
delete every later run's) is blocked while the others import: each run imports it itself.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import select
import signal
import socket
import struct
import sys
import threading

PYTHON_VARS = "PYTHON"  # environment variables read at interpreter start-up


def send(conn: socket.socket, message: dict) -> None:
    data = json.dumps(message).encode()
    conn.sendall(struct.pack("!I", len(data)) + data)


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = conn.recv(n - len(out))
        if not chunk:
            raise EOFError("connection closed")
        out += chunk
    return out


def receive(conn: socket.socket, header: bytes = b"") -> dict:
    """One message of :func:`send` (``header``: the part of its length prefix read already)."""
    header += _recv_exact(conn, 4 - len(header))
    (n,) = struct.unpack("!I", header)
    return json.loads(_recv_exact(conn, n))


def receive_request(conn: socket.socket) -> tuple[dict, list[int]]:
    header, fds, _, _ = socket.recv_fds(conn, 4, 3)
    return receive(conn, header), list(fds)


def _startup_env(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith(PYTHON_VARS)}


def _path_entries(env: dict[str, str]) -> list[str]:
    return [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]


def _sitecustomize_dirs(env: dict[str, str]) -> list[str] | None:
    """The ``PYTHONPATH`` directories ``env`` adds to the server's, if start-up can be replayed for them: each
    holds only a ``sitecustomize.py`` (the tests' fault-injection shim), which a fresh interpreter would import
    at start-up; None if anything else differs (a directory with other modules, or plugins' entry points,
    which the server already read)."""
    if {k: v for k, v in _startup_env(env).items() if k != "PYTHONPATH"} != {
        k: v for k, v in _startup_env(SERVER_ENV).items() if k != "PYTHONPATH"
    }:
        return None
    extra = [p for p in _path_entries(env) if p not in _path_entries(SERVER_ENV)]
    if extra and "sitecustomize" in sys.modules:  # one imported already: the shim would not be the one found
        return None
    for path in extra:
        try:
            names = set(os.listdir(path)) - {"__pycache__"}
        except OSError:
            return None
        if names != {"sitecustomize.py"}:
            return None
    return extra


def _monitor(conn: socket.socket, request: dict, fds: list[int]) -> dict | None:
    """In the monitor process: fork the command (returns its request there) and report on it (exits here)."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the server ignores it to reap monitors; waitpid needs it
    request["sitecustomize"] = _sitecustomize_dirs(request["env"])
    if request["sitecustomize"] is None or request.get("argv", [""])[0].startswith("-"):
        send(conn, {"fallback": True})
        os._exit(0)
    sys.stdout.flush(), sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the command
        conn.close()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        for fd in fds:
            if fd > 2:
                os.close(fd)
        return request
    for fd in fds:
        os.close(fd)
    send(conn, {"pid": pid})
    pidfd = os.pidfd_open(pid)
    while True:
        ready, _, _ = select.select([conn, pidfd], [], [])
        if pidfd in ready:
            _, status = os.waitpid(pid, 0)
            with contextlib.suppress(OSError):  # the client is gone
                send(conn, {"status": status})
            os._exit(0)
        if conn in ready and not conn.recv(1):  # the client is gone: so is its command
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os._exit(0)


def serve(listener: socket.socket) -> dict:
    """Accept requests until killed; returns a request only in a forked command process."""
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # monitors are reaped by the kernel
    parent = os.getppid()
    while True:
        if not select.select([listener], [], [], 5.0)[0]:
            if os.getppid() != parent:  # the test process is gone (killed): so is its server
                os._exit(0)
            continue
        conn, _ = listener.accept()
        try:
            request, fds = receive_request(conn)
        except (EOFError, OSError, ValueError):
            conn.close()
            continue
        sys.stdout.flush(), sys.stderr.flush()
        if os.fork() == 0:  # the monitor
            listener.close()
            request = _monitor(conn, request, fds)
            if request is not None:
                return request
            os._exit(0)
        conn.close()
        for fd in fds:
            os.close(fd)


def _fork_the_other_ranks_too() -> None:
    """Lightning's DDP launcher starts ranks 1.. as ``python -m <module> <args>``: through the client instead,
    so that they too are forked here (the same argv, environment and working directory; only the prefix
    changes)."""
    from lightning.fabric.strategies.launchers import subprocess_script as fabric_launcher
    from lightning.pytorch.strategies.launchers import subprocess_script as pytorch_launcher

    client = os.path.join(os.path.dirname(os.path.abspath(__file__)), "client.py")
    basic, hydra = fabric_launcher._basic_subprocess_cmd, fabric_launcher._hydra_subprocess_cmd

    def through_client(command):
        command = list(command)
        return [sys.executable, client, *command[2:]] if command[:2] == [sys.executable, "-m"] else command

    def basic_command():
        return through_client(basic())

    def hydra_command(local_rank):
        command, cwd = hydra(local_rank)
        return through_client(command), cwd

    for launcher in (fabric_launcher, pytorch_launcher):
        launcher._basic_subprocess_cmd, launcher._hydra_subprocess_cmd = basic_command, hydra_command


def run_command(request: dict) -> None:
    """``python -m <module> <args>`` in the request's directory and environment (this process's exit is its)."""
    import runpy

    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.path[0] = os.getcwd()  # what ``python -m`` puts first
    if request["sitecustomize"]:  # PYTHONPATH's directories follow it; site imports sitecustomize from them
        sys.path[1:1] = request["sitecustomize"]
        importlib.import_module("sitecustomize")
    module, *args = request["argv"]
    sys.argv = [module, *args]  # runpy sets argv[0] to the module's file
    sys.modules.pop(module, None)  # run as __main__, not the imported copy (python -m warns if it was imported)
    if "lightning" in sys.modules:
        _fork_the_other_ranks_too()
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    socket_path, *preload = sys.argv[1:]
    SERVER_ENV = dict(os.environ)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_path)  # listening before the imports: early clients wait in the backlog
    listener.listen(64)
    blocked = [name[1:] for name in preload if name.startswith("!")]
    for name in blocked:  # an import of it fails here (optional-import sites see it missing), and in each run it
        sys.modules[name] = None  # is imported afresh: its per-process state (wandb's media temp dir) is the run's
    for name in preload:
        if not name.startswith("!"):
            importlib.import_module(name)
    for name in blocked:
        del sys.modules[name]
    if threading.active_count() > 1:  # a forked run would lack them, holding whatever locks they held
        print(f"forkserver: threads started while importing: {threading.enumerate()}", file=sys.stderr)
    request = serve(listener)
    del socket_path, preload, blocked, listener
    run_command(request)
