"""Regular expressions of route matches (HTTPRoute's RegularExpression path, header and query parameter
matches), compiled by RE2 (google-re2): a match takes time linear in its input, so a hostile path or header
cannot stall the data path as a backtracking engine (Python's re) can; Envoy uses RE2 for the same reason.
A pattern must match the whole value (as Envoy's safe_regex does)."""
from __future__ import annotations

import re2

MAX_PATTERN = 1024  # the Gateway API's limit on a match value
_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # a bad pattern is the config's error, reported with its line, not logged by RE2


def compile_pattern(pattern: str):
    """The compiled pattern; ValueError with RE2's reason when it is not one RE2 takes (backreferences and
    lookarounds are not: they would need backtracking)."""
    if not isinstance(pattern, str) or not pattern or len(pattern) > MAX_PATTERN:
        raise ValueError(f"a regular expression of 1 to {MAX_PATTERN} characters, got {pattern!r}")
    try:
        return re2.compile(pattern, _OPTIONS)
    except re2.error as exc:
        reason = exc.args[0].decode("utf-8", "replace") if exc.args and isinstance(exc.args[0], bytes) else exc
        raise ValueError(f"not a regular expression RE2 takes ({reason}): {pattern!r}") from None
