"""The ``metric`` check: a number measured from this machine (Prometheus or an HTTP JSON endpoint), judged.

Unlike the other kinds it sends nothing to the host: :meth:`MetricCheck.measure` queries the metric
source from the control machine (beside the host's probe session, see :mod:`deploytest.checks.runner`)
and :meth:`MetricCheck.judge` turns the measurement into a verdict, pure. As in Argo Rollouts, an
attempt has one of four outcomes:

* green: the value meets ``min`` / ``max`` / ``condition`` (and ``compare``);
* red: it does not (re-measured until the check's deadline, like every red check);
* error: the query failed; tolerated up to ``max_errors`` times in a row, then red at once;
* inconclusive: no value (an empty result, NaN); what then is ``inconclusive``: ``pause`` (re-measured
  until the deadline, then a terminal asks; without one, as in CI, red; a single look, as in the
  baseline, asks nobody and is red), ``red`` (like a red value) or ``fail`` (red at once).

The condition language is :mod:`deploytest.checks.metric_condition`; fetching the number and filling
in the host is :mod:`deploytest.checks.metric_sources`.
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Optional, Sequence

from ..errors import ConfigError
from .base import Check, ProbeOutput, Verdict, snippet
from .http import json_path
from .metric_condition import evaluate_condition, parse_condition
from .metric_sources import _ENV, _get_json, _why, fill_promql, fill_url, prometheus_value, with_env
from .schema import Field

OUTCOMES = ("green", "red", "error", "inconclusive")
_ask_lock = threading.Lock()


@dataclass(frozen=True)
class MetricVerdict(Verdict):
    """A verdict with the Argo-style outcome of the measurement it judged."""

    outcome: str = "green"

    def redacted(self, secret_values: list[str]) -> Verdict:
        """This verdict with every secret value replaced by ``***`` (outcome kept)."""
        plain = super().redacted(secret_values)
        return MetricVerdict(plain.ok, plain.expected, plain.observed, plain.detail, self.outcome)


def _verdict(outcome: str, expected: str, observed: str, detail: str = "") -> MetricVerdict:
    return MetricVerdict(outcome == "green", expected, observed, detail, outcome)


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fmt(value: Optional[float]) -> str:
    if value is None:
        return "none"
    return f"{value:.6g}"


class MetricCheck(Check):
    """A number from Prometheus (``prometheus: {url, query}``) or an HTTP JSON endpoint
    (``http_json: {url, path}``), measured from this machine and held to ``min`` / ``max`` /
    ``condition`` and, during a rollout, to the hosts not switched yet (``compare``)."""

    kind = "metric"
    primary = "prometheus"
    local = True
    fields: ClassVar[dict[str, Field]] = {
        "prometheus": Field("mapping"),
        "http_json": Field("mapping"),
        "headers": Field("str_map"),
        "min": Field("scalar"),
        "max": Field("scalar"),
        "condition": Field("str"),
        "compare": Field("mapping"),
        "max_errors": Field("count", default=4),
        "inconclusive": Field("str", default="pause", choices=("pause", "red", "fail")),
        "count": Field("count", default=1),
    }
    secret_fields = frozenset({"headers"})

    @classmethod
    def refine(cls, params: Mapping[str, Any], where: str) -> None:
        """Exactly one source with its keys; numbers for min/max; a condition that parses; compare's keys."""
        sources = [k for k in ("prometheus", "http_json") if params.get(k) is not None]
        if len(sources) != 1:
            raise ConfigError(f"{where}: expected exactly one of prometheus: {{url, query}} or"
                              f" http_json: {{url, path}}, got {len(sources)}. Nothing was changed.")
        source = sources[0]
        body = params[source]
        need = ("url", "query") if source == "prometheus" else ("url", "path")
        for key in body:
            if key not in need:
                raise ConfigError(f"{where}.{source}.{key}: unknown key (expected one of: {', '.join(need)})."
                                  " Nothing was changed.")
        for key in need:
            value = body.get(key)
            if not isinstance(value, str) or not value.strip() or "\x00" in value:
                raise ConfigError(f"{where}.{source}.{key}: missing or not a string (required)."
                                  " Nothing was changed.")
        url = str(body["url"])
        if not url.startswith(("http://", "https://")) or any(c.isspace() for c in url):
            raise ConfigError(f"{where}.{source}.url: expected an http:// or https:// URL, got {url[:60]!r}."
                              " Nothing was changed.")
        for key in ("min", "max"):
            if params.get(key) is not None and not _number(params[key]):
                raise ConfigError(f"{where}.{key}: expected a number, got {params[key]!r}. Nothing was changed.")
        if params.get("condition") is not None:
            try:
                parse_condition(str(params["condition"]))
            except ValueError as error:
                raise ConfigError(f"{where}.condition: expected a condition over result like"
                                  f" \"result < 0.05\": {error}. Nothing was changed.") from None
        compare = params.get("compare")
        if compare is not None:
            for key, value in compare.items():
                if key not in ("max_ratio", "max_increase"):
                    raise ConfigError(f"{where}.compare.{key}: unknown key (expected one of: max_increase,"
                                      " max_ratio). Nothing was changed.")
                if not _number(value) or value < 0:
                    raise ConfigError(f"{where}.compare.{key}: expected a number >= 0, got {value!r}."
                                      " Nothing was changed.")
        if all(params.get(k) is None for k in ("min", "max", "condition", "compare")):
            raise ConfigError(f"{where}: expected at least one of min, max, condition or compare."
                              " Nothing was changed.")
        if int(params.get("count") or 0) < 1:
            raise ConfigError(f"{where}.count: expected a whole number >= 1. Nothing was changed.")

    @property
    def source(self) -> str:
        """``prometheus`` or ``http_json``."""
        return "prometheus" if self.params.get("prometheus") else "http_json"

    def subject(self) -> str:
        body = self.params[self.source]
        return str(body["query"] if self.source == "prometheus" else f"{body['url']} {body['path']}")

    def expectation(self) -> str:
        parts = []
        if self.params.get("min") is not None:
            parts.append(f">= {self.params['min']:g}")
        if self.params.get("max") is not None:
            parts.append(f"<= {self.params['max']:g}")
        if self.params.get("condition"):
            parts.append(str(self.params["condition"]))
        compare = self.params.get("compare") or {}
        if "max_ratio" in compare:
            parts.append(f"at most {compare['max_ratio']:g}x the unswitched hosts")
        if "max_increase" in compare:
            parts.append(f"at most {compare['max_increase']:g} above the unswitched hosts")
        count = int(self.params.get("count") or 1)
        return " and ".join(parts) + (f" ({count} times in a row)" if count > 1 else "")

    def probe(self) -> str:
        raise RuntimeError("a metric check is measured from this machine, not by a probe on the host")

    def secret_values(self) -> list[str]:
        values = [str(v) for v in (self.params.get("headers") or {}).values() if v]
        values += [v for v in (with_env(str(h), strict=False) for h in values) if v]
        values += [os.environ.get(n, "") for h in values for n in _ENV.findall(h) if os.environ.get(n)]
        password = urllib.parse.urlsplit(str(self.params[self.source]["url"])).password
        return values + ([password] if password else [])

    # -- measuring (I/O, this machine) ------------------------------------------------------------

    def query_one(self, host: str, address: str, at: float) -> tuple[Optional[float], str]:
        """The value for one host at time ``at`` (None: no value), and the query as sent.

        :raises OSError: or ValueError: the query failed.
        """
        body = self.params[self.source]
        headers = {str(k): with_env(str(v)) for k, v in (self.params.get("headers") or {}).items()}
        headers.setdefault("Accept", "application/json")
        if self.source == "prometheus":
            query = fill_promql(str(body["query"]), host, address)
            base = fill_url(str(body["url"]), host, address).rstrip("/")
            endpoint = base if "/api/v1/query" in base else base + "/api/v1/query"
            url = endpoint + "?" + urllib.parse.urlencode({"query": query, "time": f"{at:.3f}"})
            return prometheus_value(_get_json(url, headers)), query
        url = fill_url(str(body["url"]), host, address)
        document = _get_json(url, headers)
        found, value = json_path(document, str(body["path"]))
        if not found or value is None:
            return None, url
        if isinstance(value, str):
            value = float(value)  # "0.5" as many exporters write it; ValueError: an error
        if not _number(value):
            raise ValueError(f"{body['path']} is {type(value).__name__} {snippet(json.dumps(value), 40)},"
                             " not a number")
        return float(value), url

    def measure(self, target: Any) -> ProbeOutput:
        """Query the value for ``target`` (and, with ``compare``, for the rollout's unswitched hosts at the
        same moment); the JSON the judge reads, or exit 1 and the reason on stderr."""
        from ..analysis import address_of, baseline_for

        at = time.time()
        try:
            value, sent = self.query_one(target.name, address_of(target), at)
        except Exception as error:  # noqa: BLE001 - any failed query is an "error" outcome
            return ProbeOutput(1, stderr=_why(error).encode())
        found: dict[str, Any] = {"value": value, "query": sent}
        if self.params.get("compare"):
            peers = baseline_for(target.name)
            values: list[float] = []
            for peer in peers:
                try:
                    peer_value, _ = self.query_one(peer.name, address_of(peer), at)
                except Exception:  # noqa: BLE001 - a peer that cannot be measured is left out
                    continue
                if peer_value is not None and not math.isnan(peer_value):
                    values.append(peer_value)
            found["peers"] = [p.name for p in peers]
            found["rest"] = sum(values) / len(values) if values else None
        return ProbeOutput(0, stdout=json.dumps(found).encode())

    # -- judging (pure) ----------------------------------------------------------------------------

    def judge(self, output: ProbeOutput) -> Verdict:
        expected = self.expectation()
        if output.exit_code != 0:
            return _verdict("error", expected, f"query failed: {snippet(output.error_text, 160)}")
        found = json.loads(output.text)
        value = found.get("value")
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return _verdict("inconclusive", expected, "no value (empty result or NaN)")
        value = float(value)
        problems = []
        low, high, condition = self.params.get("min"), self.params.get("max"), self.params.get("condition")
        if low is not None and value < low:
            problems.append(f"below min {low:g}")
        if high is not None and value > high:
            problems.append(f"above max {high:g}")
        if condition and not evaluate_condition(parse_condition(str(condition)), value):
            problems.append(f"not {condition}")
        observed = _fmt(value)
        detail = ""
        compare = self.params.get("compare") or {}
        if compare:
            rest = found.get("rest")
            if rest is None:
                detail = "not compared: no unswitched host of this rollout gave a value"
            else:
                observed += f" (unswitched hosts: {_fmt(rest)})"
                ratio = self.params["compare"].get("max_ratio")
                if ratio is not None and value > rest * ratio and not (rest == 0 and value == 0):
                    shown = f"{value / rest:.3g}x" if rest else "more than 0"
                    problems.append(f"{shown} the unswitched hosts, max_ratio {ratio:g}")
                increase = compare.get("max_increase")
                if increase is not None and value - rest > increase:
                    problems.append(f"{_fmt(value - rest)} above the unswitched hosts, max_increase {increase:g}")
        if problems:
            return _verdict("red", expected, f"{observed}: {'; '.join(problems)}", detail)
        return _verdict("green", expected, observed, detail)

    def conclude(self, verdicts: Sequence[Verdict], *, last: bool) -> tuple[Verdict, bool]:
        """Errors tolerated up to ``max_errors`` in a row; ``count`` greens in a row; inconclusive as configured."""
        latest = verdicts[-1]
        outcome = getattr(latest, "outcome", "green" if latest.ok else "red")
        in_a_row = 0
        for verdict in reversed(verdicts):
            if getattr(verdict, "outcome", None) != outcome:
                break
            in_a_row += 1
        if outcome == "error":
            limit = int(self.params.get("max_errors", 4))
            if in_a_row > limit:
                return _verdict("red", latest.expected, latest.observed,
                                f"{in_a_row} failed queries in a row (max_errors {limit})"), True
            return _verdict("error", latest.expected, latest.observed,
                            f"failed query {in_a_row} in a row, tolerated up to max_errors {limit}"), False
        if outcome == "inconclusive":
            mode = self.params.get("inconclusive", "pause")
            if mode == "fail":
                return _verdict("red", latest.expected, latest.observed,
                                "inconclusive: failed (inconclusive: fail)"), True
            if mode == "pause" and last and len(verdicts) == 1:  # one look (baseline, soak): nobody is asked
                return _verdict("red", latest.expected, latest.observed, "inconclusive at a single look"), True
            if mode == "pause" and last:
                return self._ask(latest), True
            return latest, False
        if outcome == "green":
            count = int(self.params.get("count") or 1)
            if in_a_row < count and not (last and len(verdicts) == 1):
                return _verdict("red", latest.expected, latest.observed,
                                f"green {in_a_row} of {count} times in a row so far"), False
        return latest, False

    def _ask(self, latest: Verdict) -> Verdict:
        """Inconclusive at the deadline with ``inconclusive: pause``: a person at a terminal decides."""
        if os.environ.get("CI") or not (sys.stdin.isatty() and sys.stderr.isatty()):
            return _verdict("red", latest.expected, latest.observed,
                            "inconclusive, and no terminal to ask (CI): failed")
        with _ask_lock:
            sys.stderr.write(f"\n{self.name}: inconclusive ({latest.observed}). Go on as if green? [y/N] ")
            sys.stderr.flush()
            answer = sys.stdin.readline().strip().lower()
        if answer in ("y", "yes"):
            return _verdict("green", latest.expected, latest.observed, "inconclusive; accepted at the terminal")
        return _verdict("red", latest.expected, latest.observed, "inconclusive; refused at the terminal")
