"""The gate keys of ``rollout`` in the config (``soak``, ``confirm``, ``confirm_url``,
``confirm_timeout``, ``analysis``), validated; pure, like the rest of the config. What they do is
:mod:`deploytest.gates`."""

from __future__ import annotations

from typing import Any, Mapping

from .errors import ConfigError

GATE_KEYS = ("soak", "confirm", "confirm_url", "confirm_timeout", "analysis")


def parse_gates(rollout: Mapping[str, Any]) -> dict[str, Any]:
    """The gate keys of ``rollout``, validated, as :class:`deploytest.config.RolloutSettings` fields.

    :raises ConfigError: one line naming the key and what was expected.
    """
    def number(key: str, default: float, low: float) -> float:
        value = rollout.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low:
            raise ConfigError(f"config deploytest.rollout.{key}: expected a number of seconds >= {low:g},"
                              f" got {value!r}. Nothing was changed.")
        return float(value)

    confirm = rollout.get("confirm") or ""
    if confirm not in ("", "after_canary"):
        raise ConfigError(f"config deploytest.rollout.confirm: expected after_canary, got {confirm!r}."
                          " Nothing was changed.")
    url = rollout.get("confirm_url")
    if url is not None and (not isinstance(url, str) or not url.startswith(("http://", "https://"))
                            or any(c.isspace() for c in url)):
        raise ConfigError(f"config deploytest.rollout.confirm_url: expected an http:// or https:// URL,"
                          f" got {url!r}. Nothing was changed.")
    if url is not None and not confirm:
        raise ConfigError("config deploytest.rollout.confirm_url: given without confirm: after_canary."
                          " Nothing was changed.")
    analysis = rollout.get("analysis") or ""
    if analysis not in ("", "background"):
        raise ConfigError(f"config deploytest.rollout.analysis: expected background, got {analysis!r}."
                          " Nothing was changed.")
    return {"soak": number("soak", 0, 0), "confirm": str(confirm), "confirm_url": url,
            "confirm_timeout": number("confirm_timeout", 600, 1), "analysis": str(analysis)}
