"""Fault injection for the crash/resume tests, read from one environment variable.

``DELIT_FAULT=<point>:<count>:<action>`` makes the named point fail when it is reached with
that count: ``kill`` sends this process SIGKILL (a hard crash), ``term`` sends it SIGTERM
(a polite stop), ``raise`` raises ``InjectedFault``. Points: ``train.step`` (after step N and its checkpoint policy),
``encode.block`` (after the N-th block of this call is written). Unset: nothing happens.
"""

from __future__ import annotations

import os
import signal

from delit_cache.utils.errors import DelitError

FAULT_ENV = "DELIT_FAULT"
ACTIONS = ("kill", "term", "raise")


class InjectedFault(RuntimeError):
    """The crash asked for by ``DELIT_FAULT`` with the ``raise`` action."""


def _parse(spec: str) -> tuple[str, int, str]:
    parts = spec.split(":")
    if len(parts) != 3 or not parts[1].isdigit() or parts[2] not in ACTIONS:
        raise DelitError(f"{FAULT_ENV}={spec!r}: expected <point>:<count>:kill|term|raise")
    return parts[0], int(parts[1]), parts[2]


def fault_point(point: str, count: int) -> None:
    """Crash here if ``DELIT_FAULT`` names ``point`` and ``count``; otherwise do nothing."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    name, at, action = _parse(spec)
    if name != point or at != count:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if action == "term":
        os.kill(os.getpid(), signal.SIGTERM)
        return
    raise InjectedFault(f"{FAULT_ENV}: injected fault at {point} {count}")
