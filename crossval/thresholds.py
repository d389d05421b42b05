"""The gates as data: thresholds.toml's gate profiles (with their overrides), expected divergences and optional points,
and the look-ups that give a case its NMSE bound, its settings, why a point may be missing and its expected divergence.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from bitnet_ref.errors import ConfigError
from crossval import cases as C

THRESHOLDS_PATH = Path(__file__).with_name("thresholds.toml")
APPROX_GATE = "approx"  # the thresholds.toml profile that judges ggml cases on paths the profile does not emulate


def load_thresholds(path: str | Path | None = None) -> dict:
    """The gate profiles, expected divergences and optional points (thresholds.toml by default)."""
    path = Path(path or THRESHOLDS_PATH)
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"thresholds {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"thresholds {path}: not TOML ({exc})") from None


def _matches(when: dict, case: C.Case, what: str) -> bool:
    """Whether every `when` field (a Case field) equals the case's; an unknown field is an error naming `what`."""
    for k, v in when.items():
        if not hasattr(case, k):
            raise KeyError(f"thresholds: {what} matches on {k!r}, which is not a case field")
        if getattr(case, k) != v:
            return False
    return True


def _overrides(th: dict, case: C.Case, gate: str) -> list[dict]:
    """The gate profile's override tables whose `when` matches the case, in file order."""
    ovs = th["profiles"][gate].get("overrides", [])
    return [o for o in ovs if _matches(o["when"], case, f"profiles.{gate}.overrides")]


def nmse_bound(th: dict, case: C.Case, point: str, gate: str | None = None) -> float:
    """Per-point NMSE bound of a gate profile (the case's by default): each matching override's nmse (point, then
    default), then the profile's."""
    gate = gate or case.profile
    tables = [o.get("nmse", {}) for o in _overrides(th, case, gate)] + [th["profiles"][gate]["nmse"]]
    for table in tables:
        for key in (point, "default"):
            if key in table:
                return float(table[key])
    raise KeyError(f"thresholds: profiles.{gate}.nmse has no default")


def setting(th: dict, case: C.Case, key: str, gate: str | None = None) -> object:
    """A profile-level setting (logits_r, logits_r_position, greedy): the first matching override's, else the
    gate profile's (the case's by default)."""
    gate = gate or case.profile
    for o in _overrides(th, case, gate):
        if key in o:
            return o[key]
    return th["profiles"][gate][key]


def optional_reason(th: dict, case: C.Case, point: str) -> str | None:
    """Why a point may be missing in this case (an [[optional]] entry of thresholds.toml), else None."""
    for opt in th.get("optional", []):
        if point in opt["points"] and _matches(opt["when"], case, f"optional {opt['id']}"):
            return f"{opt['id']}: {opt['reason']}"
    return None


def expected_for(th: dict, case: C.Case) -> dict | None:
    """The expected divergence a case matches, if any."""
    for exp in th.get("expected", []):
        if _matches(exp["when"], case, f"expected {exp['id']}"):
            return exp
    return None
