"""What a webhook's address may be: one rule for an upload's ``callbackUrl``, a
dataset's ``callback_url`` and the OpenAPI document, which publishes the pattern.

http(s), an optional ASCII user part, a host name or IPv4 address (a receiver on IPv6 is
reached by its name, not a bracketed address), an optional port within range, then any
printable path and query. Every URL the pattern admits parses with a host, so a
delivery never fails on the address's form; where the address then leads is checked at
each delivery (:func:`importq.delivery.webhooks.check_destination`). It is spelled
without class shorthands (``\\s``, ``\\d``), whose meaning differs between Python and
JSON Schema.
"""

from __future__ import annotations

import re

CALLBACK_URL_PATTERN = (
    r"^[Hh][Tt][Tt][Pp][Ss]?://(?:[A-Za-z0-9._~!$&'()*+,;=%:-]+@)?"
    r"[A-Za-z0-9._~!$&'()*+,;=%-]+"
    r"(?::(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4}))?"
    r"(?:[/?#][^\u0000-\u0020\u007f]*)?$"
)
WHAT_IT_MAY_BE = (
    "an http(s) URL with a host name or IPv4 address, and a port from 0 to 65535 if any"
)


def is_callback_url(url: str) -> bool:
    return re.fullmatch(CALLBACK_URL_PATTERN, url) is not None
