"""Test-only fault injection: SIGKILL this process right around a chosen file write.

Put this folder on ``PYTHONPATH`` and set ``BINDSPACE_KILL_AT="<glob>:<n>[:before]"``: the n-th
``os.replace`` onto a file whose name matches ``<glob>`` (every atomic write of bindspace ends in one)
is followed (or, with ``before``, preceded: the temporary is complete and left behind) by
``os.kill(os.getpid(), SIGKILL)``. Nothing in bindspace knows about it.

Under DDP every rank inherits the shim (Lightning's launcher starts the other ranks with the same
environment); only the rank whose ``LOCAL_RANK`` (unset: 0) equals ``BINDSPACE_KILL_RANK`` (default 0) is
killed, whatever files the others write.
"""

import fnmatch
import os
import signal

_spec = os.environ.get("BINDSPACE_KILL_AT")
_trace = os.environ.get("BINDSPACE_WRITE_TRACE")  # append every replaced file's name to this file
if _spec or _trace:
    _pattern, _n, *_when = (_spec or "-:0").split(":")
    _seen = [0]
    _rank = os.environ.get("BINDSPACE_KILL_RANK", "0")
    _replace = os.replace

    def _killing_replace(src, dst, *args, **kwargs):
        if _trace:
            with open(_trace, "a") as f:
                f.write(os.fspath(dst) + "\n")
        hit = fnmatch.fnmatch(os.path.basename(os.fspath(dst)), _pattern)
        hit = hit and os.environ.get("LOCAL_RANK", "0") == _rank  # read now: the launcher sets it after start-up
        if hit:
            _seen[0] += 1
        now = hit and _seen[0] == int(_n)
        if now and _when == ["before"]:
            os.kill(os.getpid(), signal.SIGKILL)
        _replace(src, dst, *args, **kwargs)
        if now:
            os.kill(os.getpid(), signal.SIGKILL)

    os.replace = _killing_replace
