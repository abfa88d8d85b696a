"""Settings given as mappings (optimizer, schedule, augmentation ...), checked against their defaults.

Imported by models and data, so it knows no Hydra: plain mappings in, plain dicts out.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any

from proto_lightning.errors import ConfigKeyError, ConfigValueError


def did_you_mean(bad: str, keys: Sequence[str]) -> str:
    """A hint naming the known keys closest to `bad` (by spelling or by last dotted part)."""
    close = difflib.get_close_matches(bad, keys, n=5, cutoff=0.6)
    last = bad.rsplit(".", 1)[-1]
    close += [k for k in keys if k.rsplit(".", 1)[-1] == last and k not in close][:3]
    return f" Did you mean: {', '.join(close)}?" if close else ""


def checked_settings(
    given: Mapping[str, Any] | None, defaults: Mapping[str, Any], where: str
) -> dict[str, Any]:
    """`defaults` updated with `given`, refusing a key of `given` that `defaults` does not know."""
    given = dict(given or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        hint = did_you_mean(unknown[0], list(defaults))
        raise ConfigKeyError(
            f"unknown key(s) {unknown} in {where}; known: {sorted(defaults)}.{hint}"
        )
    return {**defaults, **given}


def require_choice(value: Any, choices: Sequence[str], key: str) -> None:
    """Refuse a setting outside its choices, naming the key, the choices and the closest one."""
    if value not in choices:
        raise ConfigValueError(
            f"{key}={value!r} is not one of {', '.join(map(str, choices))}."
            + did_you_mean(str(value), list(choices))
        )
