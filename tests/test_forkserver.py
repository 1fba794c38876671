"""The tests' fork server (tests/forkserver): a forked run behaves as its own process, as ``python -m`` would."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
from conftest import python_m

PROBE = """
import json, os, sys, time
print(json.dumps({"pid": os.getpid(), "ppid": os.getppid(), "argv": sys.argv[1:], "cwd": os.getcwd(),
                  "env": os.environ.get("PROBE_VALUE"), "torch": "torch" in sys.modules,
                  "main": sys.modules["__main__"].__spec__.name}), flush=True)
action = sys.argv[1] if len(sys.argv) > 1 else ""
if action == "exit":
    sys.exit(int(sys.argv[2]))
if action == "raise":
    raise ValueError("probe failed")
if action == "selfkill":
    os.kill(os.getpid(), 9)
if action == "sleep":
    open("pid.tmp", "w").write(str(os.getpid()))
    os.replace("pid.tmp", "pid")
    time.sleep(600)
"""


@pytest.fixture
def probe(tmp_path):
    (tmp_path / "forkprobe.py").write_text(PROBE)
    return tmp_path


def run(probe, *args: str, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PROBE_VALUE": "given"}
    return subprocess.run([*python_m("forkprobe"), *args], cwd=probe, env=env, capture_output=True, text=True,
                          timeout=300, **kwargs)  # fmt: skip


def test_a_forked_run_has_its_own_argv_cwd_env_and_main(probe):
    import json

    done = run(probe, "a", "b=1")
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["argv"] == ["a", "b=1"] and seen["cwd"] == str(probe) and seen["env"] == "given"
    assert seen["main"] == "forkprobe"  # what Lightning's DDP launcher reads to start the other ranks
    if os.environ.get("BINDSPACE_TEST_FORKSERVER") != "0":
        assert seen["torch"], "not forked from the server: torch was not imported already"


def test_exit_codes_tracebacks_and_signals_are_the_commands(probe):
    assert run(probe, "exit", "3").returncode == 3
    failed = run(probe, "raise")
    assert failed.returncode == 1 and "ValueError: probe failed" in failed.stderr
    assert run(probe, "selfkill").returncode == -signal.SIGKILL


def test_signals_reach_the_command_and_killing_the_client_kills_it(probe):
    proc = subprocess.Popen([*python_m("forkprobe"), "sleep"], cwd=probe, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (probe / "pid").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    pid = int((probe / "pid").read_text())
    proc.send_signal(signal.SIGTERM)  # forwarded: the command dies of it, and the client reports that
    assert proc.wait(timeout=60) == -signal.SIGTERM

    (probe / "pid").unlink()
    proc = subprocess.Popen([*python_m("forkprobe"), "sleep"], cwd=probe, stdout=subprocess.PIPE, text=True)
    while not (probe / "pid").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    pid = int((probe / "pid").read_text())
    proc.kill()  # as subprocess.run's timeout does: the command must not outlive it
    proc.wait()
    for _ in range(200):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
        pytest.fail("the command outlived its killed client")


def test_a_different_pythonpath_gets_a_fresh_interpreter(probe, tmp_path):
    import json

    env = {**os.environ, "PYTHONPATH": str(probe)}
    done = subprocess.run([*python_m("forkprobe")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert not json.loads(done.stdout)["torch"]  # started afresh: PYTHONPATH is read at start-up


def test_a_pythonpath_of_only_a_sitecustomize_is_replayed_in_a_forked_run(probe, tmp_path):
    """The fault-injection shim's case (tests/kill_shim): its sitecustomize runs, as at a fresh start-up."""
    import json

    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text("import os\nos.environ['PROBE_VALUE'] = 'from sitecustomize'\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(shim), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([*python_m("forkprobe")], cwd=probe, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["env"] == "from sitecustomize"
    if os.environ.get("BINDSPACE_TEST_FORKSERVER") != "0":
        assert seen["torch"], "a sitecustomize-only PYTHONPATH should not need a fresh interpreter"
