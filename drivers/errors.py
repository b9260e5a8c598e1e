"""Device errors in a few words, for the log lines and `device` events a technician reads."""

from __future__ import annotations

import os
import re

_ERRNO_TEXT = re.compile(r"^\[Errno (-?\d+)\]")


def reason(error: BaseException) -> str:
    """What went wrong, without the exception's class: "connection refused", "timed out", ...

    Socket and serial errors carry an errno (aiohttp's connector errors too), which says it best.
    """
    errno = getattr(error, "errno", None)
    if isinstance(errno, int) and errno > 0:
        return os.strerror(errno).lower()
    if isinstance(error, TimeoutError):
        return "no answer (timed out)"
    text = str(error).strip()
    wrapped = _ERRNO_TEXT.match(text)  # a socket error that a library turned into its own (aiomqtt)
    if wrapped and int(wrapped.group(1)) > 0:
        return os.strerror(int(wrapped.group(1))).lower()
    return text or type(error).__name__
