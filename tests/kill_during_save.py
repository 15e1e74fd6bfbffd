#!/usr/bin/env python
"""Test driver: run ``d2af train`` and SIGKILL this very process at one point of saving a file.

    D2AF_KILL_AT=<basename>:<stage>[:<bytes>] python tests/kill_during_save.py <train_net args>

``basename`` is the file being saved (``model_final.pth``, ``model_0000003.pth``,
``last_checkpoint``); ``stage`` is where the process dies:

* ``write:<bytes>``: after ``<bytes>`` bytes of the checkpoint have been written;
* ``fsync``: when the complete temporary file is about to be fsync'ed;
* ``replace``: when the temporary file is about to be renamed over ``basename``.

Nothing is caught or cleaned up: the kernel kills the process as any SIGKILL (OOM killer, a
preempted job, ``kill -9``) would.
"""
import os
import signal
import sys

import torch

target, stage, *rest = os.environ["D2AF_KILL_AT"].split(":")
temp_prefix = "." + target + "."


def die():
    os.kill(os.getpid(), signal.SIGKILL)


class KillingWriter:
    """File wrapper that dies after ``limit`` bytes, having written exactly that many."""

    def __init__(self, f, limit: int):
        self._f, self._left = f, limit

    def write(self, data):
        data = bytes(data)
        if len(data) >= self._left:
            self._f.write(data[: self._left])
            self._f.flush()
            die()
        self._left -= len(data)
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)


def _is_target_temp(name: str) -> bool:
    # The temporary file of an atomic save, or the file itself when written in place (as
    # fvcore's Checkpointer does: then this test must see the truncated file).
    base = os.path.basename(str(name))
    return base.startswith(temp_prefix) or base == target


if stage == "write":
    _save = torch.save

    def save(obj, f, *args, **kwargs):
        if hasattr(f, "fileno") and _is_target_temp(os.readlink(f"/proc/self/fd/{f.fileno()}")):
            f = KillingWriter(f, int(rest[0]))
        return _save(obj, f, *args, **kwargs)

    torch.save = save
elif stage == "fsync":
    _fsync = os.fsync

    def fsync(fd):
        if _is_target_temp(os.readlink(f"/proc/self/fd/{fd}")):
            die()
        return _fsync(fd)

    os.fsync = fsync
elif stage == "replace":
    _replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if os.path.basename(str(dst)) == target:
            die()
        return _replace(src, dst, *args, **kwargs)

    os.replace = replace
else:
    sys.exit(f"unknown stage {stage!r}")

from d2_anchorfree.cli.train import argument_parser, main  # noqa: E402  (after the patches above)

main(argument_parser().parse_args(sys.argv[1:]))
