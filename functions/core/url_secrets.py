"""The one rule for a URL Switchboard is given: no secret in it.

A URL is shown wherever the thing it names is: logs, errors, metrics labels, readiness
reports, an export's watermark row and manifest, Prefect's record of a flow run's
parameters. A password in its userinfo (``s3://KEY:SECRET@bucket``) would be shown with it,
and so would a token in its query or fragment (``?key=...``). Such URLs are refused, never
used, and never repeated in the refusal: :func:`shown` is the URL with those parts masked.
The LLM upstreams (``settings``) and export destinations (``exports.destinations``) apply it.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

_USERINFO = re.compile(r"//[^/?#@]*@")


def has_credentials(url: str) -> bool:
    """Whether ``url`` carries a user or password (``scheme://user:password@host``)."""
    return _USERINFO.search(url) is not None


def has_query(url: str) -> bool:
    """Whether ``url`` carries a query or a fragment, either of which may hold a token."""
    try:
        parts = urlsplit(url)
    except ValueError:  # a bad IPv6 literal: judged by its characters
        return "?" in url or "#" in url
    return bool(parts.query or parts.fragment)


def shown(url: str) -> str:
    """``url`` as it may be shown: userinfo masked, query and fragment cut."""
    masked = _USERINFO.sub("//***@", url, count=1)
    if has_query(url):
        return masked.split("?", 1)[0].split("#", 1)[0] + "?…"
    return masked
