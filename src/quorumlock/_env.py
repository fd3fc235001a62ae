"""``LockManager.from_env()``: a manager configured by environment variables.

Every option of the manager's constructor has a variable: ``QUORUMLOCK_`` and
the option's name in capitals (``ttl`` -> ``QUORUMLOCK_TTL``), and the nodes
are ``QUORUMLOCK_NODES``, comma-separated URLs (what ``quorumlock nodes up``
prints).  The list is derived from the constructor's signature, so an option
added there gets its variable; only ``ssl_context`` (an object) has none: TLS
settings go in the ``rediss://`` URLs' query options.  Values go through the
constructor's own checks; every error names the variable it came from.
Keyword arguments of ``from_env`` override the environment.  See
docs/configuration.md.
"""

from __future__ import annotations

import difflib
import inspect
import math
import os
import re
import warnings
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple
from urllib.parse import urlsplit

PREFIX = "QUORUMLOCK_"
NODES_VAR = PREFIX + "NODES"
#: Constructor parameters without a variable: objects a string cannot name,
#: and private ones.
NO_VARIABLE = ("ssl_context",)
#: Other variables quorumlock reads (not manager options): never reported as
#: misspellings.
OTHER_VARIABLES = frozenset({
    "QUORUMLOCK_NO_EXTENSIONS", "QUORUMLOCK_SERVER", "QUORUMLOCK_REQUIRE_EXTENSIONS",
    "QUORUMLOCK_CI_BUDGET", "QUORUMLOCK_CLOCKSHIM_SRC",
})

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
_NONE = ("none", "default")


def variable(option: str) -> str:
    """The environment variable of a manager option."""
    return PREFIX + option.upper()


def _parse_bool(var: str, raw: str) -> bool:
    v = raw.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise ValueError(f"{var}={raw!r}: must be one of {', '.join(_TRUE + _FALSE)}")


def _parse_float(var: str, raw: str) -> float:
    try:
        v = float(raw.strip())
    except ValueError:
        raise ValueError(f"{var}={raw!r}: must be a number") from None
    if not math.isfinite(v):
        raise ValueError(f"{var}={raw!r}: must be finite")
    return v


def _parse_optional_float(var: str, raw: str) -> Optional[float]:
    if raw.strip().lower() in _NONE:
        return None
    return _parse_float(var, raw)


def _parse_int(var: str, raw: str) -> int:
    try:
        return int(raw.strip())
    except ValueError:
        raise ValueError(f"{var}={raw!r}: must be an integer") from None


def _parse_pair(var: str, raw: str) -> Any:
    parts = [p for p in re.split(r"[,\s]+", raw.strip()) if p]
    if len(parts) == 1:
        return _parse_float(var, parts[0])
    if len(parts) == 2:
        return (_parse_float(var, parts[0]), _parse_float(var, parts[1]))
    raise ValueError(f"{var}={raw!r}: must be seconds ('0.2') or a 'low,high' pair ('0.1,0.3')")


def _parse_restart_guard(var: str, raw: str) -> Any:
    if raw.strip().lower() == "strict":
        return "strict"
    try:
        return _parse_bool(var, raw)
    except ValueError:
        raise ValueError(f"{var}={raw!r}: must be true, false or strict") from None


#: Options whose default's type does not say how to read them.
_SPECIAL: Dict[str, Callable[[str, str], Any]] = {
    "restart_guard": _parse_restart_guard,
    "retry_delay": _parse_pair,
}


def _parser(name: str, default: Any) -> Callable[[str, str], Any]:
    if name in _SPECIAL:
        return _SPECIAL[name]
    if isinstance(default, bool):
        return _parse_bool
    if isinstance(default, int):
        return _parse_int
    if isinstance(default, float):
        return _parse_float
    if default is None:
        return _parse_optional_float
    raise TypeError(f"no environment parser for option {name!r} (default {default!r})")  # pragma: no cover


def options(cls: Any) -> List[Tuple[str, str, Any]]:
    """``(option, variable, default)`` of every constructor option that has a
    variable, in signature order."""
    from ._manager import ManagerBase

    sig = inspect.signature(ManagerBase.__init__)
    out = []
    for p in sig.parameters.values():
        if p.name in ("self", "nodes") or p.name.startswith("_") or p.name in NO_VARIABLE:
            continue
        if p.kind is not p.KEYWORD_ONLY:
            continue
        out.append((p.name, variable(p.name), p.default))
    return out


def _redact(text: str, urls: List[str]) -> str:
    """``text`` with the password of every URL in ``urls`` replaced."""
    for url in urls:
        try:
            pw = urlsplit(url).password
        except ValueError:
            pw = None
        if pw:
            text = text.replace(pw, "***")
        for m in re.finditer(r"[?&]password=([^&#]+)", url):
            text = text.replace(m.group(1), "***")
    return text


def _nodes_from(env: Mapping[str, str]) -> List[str]:
    raw = env.get(NODES_VAR)
    if raw is not None and not isinstance(raw, str):
        raise TypeError(f"{NODES_VAR} must be a string of comma-separated URLs, got {type(raw).__name__}")
    if raw is None or not raw.strip():
        raise ValueError(
            f"{NODES_VAR} is not set (or empty): give the node URLs, comma-separated "
            "(what 'quorumlock nodes up' prints), or pass nodes=[...]"
        )
    urls = [u.strip() for u in raw.split(",")]
    if any(not u for u in urls):
        raise ValueError(f"{NODES_VAR}: empty entry in the comma-separated list")
    return urls


def _warn_misspelled(env: Mapping[str, str], known: List[str]) -> None:
    names = set(known) | {NODES_VAR} | OTHER_VARIABLES
    for k in env:
        if k.startswith(PREFIX) and k not in names:
            close = difflib.get_close_matches(k, sorted(names), n=1, cutoff=0.8)
            if close:
                warnings.warn(f"{k} is not a quorumlock setting (ignored); did you mean {close[0]}?",
                              stacklevel=4)


def from_env(cls: Any, environ: Optional[Mapping[str, str]], overrides: Dict[str, Any]) -> Any:
    """Build ``cls(...)`` from ``environ`` (default ``os.environ``) and ``overrides``."""
    env: Mapping[str, str] = os.environ if environ is None else environ
    if not isinstance(env, Mapping):
        raise TypeError(f"environ must be a mapping of str to str, got {type(env).__name__}")
    opts = options(cls)
    from ._manager import ManagerBase

    # Every constructor parameter can be given as a keyword (the private
    # engine choice too); only the public ones have variables.
    known = set(inspect.signature(ManagerBase.__init__).parameters) - {"self"}
    unknown = sorted(k for k in overrides if k not in known)
    if unknown:
        raise TypeError(f"{cls.__name__}.from_env() got an unexpected keyword argument {unknown[0]!r}")
    _warn_misspelled(env, [var for _n, var, _d in opts])
    kwargs: Dict[str, Any] = {}
    sources: Dict[str, Tuple[str, str]] = {}   # option -> (variable, raw text)
    for name, var, default in opts:
        if name in overrides:
            continue
        raw = env.get(var)
        if raw is not None and not isinstance(raw, str):
            raise TypeError(f"{var} must be a string (an environment value), got {type(raw).__name__}")
        if raw is None or raw.strip() == "":
            continue
        kwargs[name] = _parser(name, default)(var, raw)
        sources[name] = (var, raw)
    env_urls: List[str] = []
    if "nodes" in overrides:
        nodes = overrides["nodes"]
    else:
        nodes = env_urls = _nodes_from(env)
        from ._config import parse_nodes

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the constructor warns, once
                parse_nodes(nodes)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{NODES_VAR}: {_redact(str(exc), env_urls)}") from None
    kwargs.update({k: v for k, v in overrides.items() if k != "nodes"})
    try:
        return cls(nodes, **kwargs)
    except (TypeError, ValueError) as exc:
        msg = str(exc)
        named = [f"{var}={raw!r}" for name, (var, raw) in sources.items()
                 if re.search(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", msg)]
        if not named:
            raise
        raise type(exc)(f"{', '.join(named)}: {_redact(msg, env_urls)}") from None
