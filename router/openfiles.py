"""The process's open files limit: raised at start, read for the connection limit.

No imports beyond the standard library: the supervisor calls this before its metrics are set up.
"""
from __future__ import annotations

import logging
import resource

log = logging.getLogger("router")

OPEN_FILES_WANTED = 1 << 20  # Linux's default fs.nr_open


def raise_open_files_limit() -> int:
    """Raise the soft limit on open files to the hard one (as Go programs and nginx's
    worker_rlimit_nofile do): each proxied request holds two sockets, and the common soft
    default of 1024 would cap the router near 500 concurrent requests. Returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = OPEN_FILES_WANTED if hard == resource.RLIM_INFINITY else min(hard, OPEN_FILES_WANTED)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open files limit from %d to %d: %s", soft, want, exc)
    return soft


def open_files_limit() -> int:
    """The soft limit (an unlimited one counts as OPEN_FILES_WANTED)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return OPEN_FILES_WANTED if soft == resource.RLIM_INFINITY else soft
