"""Where a ``metric`` check's number comes from: a Prometheus instant query or an HTTP JSON endpoint,
fetched from this machine, with ``{host}`` / ``{address}`` / ``{env:NAME}`` filled in.

``{host}`` and ``{address}`` in a query name the host under test: URL-encoded in URLs, escaped as a
PromQL string in a Prometheus query.
"""

from __future__ import annotations

import json
import math
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Mapping, Optional

from .base import snippet

#: How long one query may take.
QUERY_SECONDS = 5.0


# -- placeholders ---------------------------------------------------------------------------------


def fill_url(template: str, host: str, address: str) -> str:
    """``template`` with ``{host}`` and ``{address}`` URL-encoded."""
    return template.replace("{host}", urllib.parse.quote(host, safe="")).replace(
        "{address}", urllib.parse.quote(address, safe=""))


def fill_promql(template: str, host: str, address: str) -> str:
    """``template`` with ``{host}`` and ``{address}`` escaped for a PromQL double-quoted string."""
    return template.replace("{host}", _promql_escape(host)).replace("{address}", _promql_escape(address))


def _promql_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


_ENV = re.compile(r"\{env:([A-Za-z_][A-Za-z0-9_]*)\}")


def with_env(text: str, *, strict: bool = True) -> str:
    """``text`` with each ``{env:NAME}`` replaced by this machine's environment variable NAME, so a token
    stays out of fabric.yaml (and out of the suite recorded on the hosts).

    :raises ValueError: a variable is not set (with ``strict``; else it is left empty).
    """
    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ and strict:
            raise ValueError(f"environment variable {name} (in headers) is not set on this machine")
        return os.environ.get(name, "")

    return _ENV.sub(value, text)


def prometheus_value(document: Any) -> Optional[float]:
    """The one number of a Prometheus instant query's answer (None: empty result or NaN).

    :raises ValueError: an error answer, or more than one series (aggregate them, e.g. ``sum(...)``).
    """
    if not isinstance(document, dict) or document.get("status") != "success":
        error = document.get("error") if isinstance(document, dict) else None
        raise ValueError(f"Prometheus answered: {error or snippet(json.dumps(document), 120)}")
    data = document.get("data") or {}
    kind, result = data.get("resultType"), data.get("result")
    if kind == "scalar":
        sample = result
    elif kind == "vector":
        if not result:
            return None
        if len(result) > 1:
            raise ValueError(f"the query gave {len(result)} series, not one; aggregate them (e.g. sum(...))")
        sample = result[0].get("value")
    else:
        raise ValueError(f"the query gave a {kind}, not a vector or scalar (an instant query, without [range])")
    if not isinstance(sample, list) or len(sample) != 2:
        raise ValueError(f"unexpected sample {snippet(json.dumps(sample), 60)}")
    value = float(sample[1])
    return None if math.isnan(value) else value


def _get_json(url: str, headers: Mapping[str, str]) -> Any:
    request = urllib.request.Request(url, headers=dict(headers))
    try:
        with urllib.request.urlopen(request, timeout=QUERY_SECONDS) as response:  # noqa: S310 - http(s) only
            return json.loads(response.read(16 * 1024 * 1024))
    except urllib.error.HTTPError as error:
        try:  # Prometheus says what is wrong with a query in its JSON answer
            said = json.loads(error.read(64 * 1024)).get("error")
        except Exception:  # noqa: BLE001 - no JSON: the status alone
            said = None
        if said:
            raise ValueError(f"HTTP {error.code}: {snippet(str(said), 160)}") from None
        raise


def _why(error: BaseException) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        return f"{error.reason}"
    if isinstance(error, json.JSONDecodeError):
        return f"not JSON ({error.msg})"
    return str(error) or type(error).__name__
