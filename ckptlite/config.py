"""Effective configuration: defaults < ``ckptlite.toml`` < environment < flags.

The file is ``ckptlite.toml`` in ``platformdirs.user_config_dir("ckptlite")``,
or the path in ``$CKPTLITE_CONFIG``. Each later layer overrides the earlier
ones, key by key, and every value remembers where it came from, so
``ckptlite config`` can say why a store or an option was chosen::

    url = "/data/ckpts"          # or home = "/data/ckpts"
    durability = "full"
    [retention]
    keep_last = 5
    max_age = "30d"

Named remotes, for ``ckptlite sync --to NAME`` (``ckptlite remote add/list/remove``)::

    [remotes.hub]
    url = "postgresql://ckpt@db.example/ckpts"

or ``$CKPTLITE_REMOTE_HUB`` (the name upper-cased, ``-`` as ``_``), which wins.

The store URL is the first of: ``url`` then ``home`` in the highest layer that
sets either, else the user data directory. ``allow_pickle`` is deliberately
not configurable: unpickling runs code, so it is asked for in code or per
command.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .types import HASHES

__all__ = [
    "KEYS",
    "REMOTE_NAME",
    "Key",
    "Remote",
    "Settings",
    "add_remote",
    "config_path",
    "load",
    "parse_duration",
    "remotes",
    "remove_remote",
]

DURABILITY = ("none", "safe", "full")
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: object) -> timedelta:
    """Return a timedelta from seconds (int/float) or text like ``"90s"``, ``"12h"``, ``"30d"``.

    Raises:
        ConfigError: not a non-negative duration.

    >>> parse_duration("2d")
    datetime.timedelta(days=2)
    """
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return timedelta(seconds=value)
    m = _DURATION_RE.match(value) if isinstance(value, str) else None
    if m is None:
        raise ConfigError(
            f"not a duration: {value!r}",
            hint="Use seconds, or a number with a unit: 90s, 45m, 12h, 30d, 2w.",
        )
    return timedelta(seconds=float(m.group(1)) * _UNIT_SECONDS[m.group(2)])


def _text(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"expected a non-empty string, not {value!r}")
    return value


def _choice(*allowed: str) -> Callable[[object], str]:
    def parse(value: object) -> str:
        if value not in allowed:
            raise ConfigError(f"expected one of {', '.join(allowed)}, not {value!r}")
        return str(value)

    return parse


def _int(lo: int, hi: int) -> Callable[[object], int]:
    def parse(value: object) -> int:
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = int(value.strip())
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise ConfigError(f"expected an integer from {lo} to {hi}, not {value!r}")
        return value

    return parse


def _seconds(value: object) -> float:
    seconds = parse_duration(value).total_seconds()
    if seconds <= 0:
        raise ConfigError(f"expected a positive duration, not {value!r}")
    return seconds


def _bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"expected true or false, not {value!r}")


def _best(value: object) -> tuple[str, str]:
    """Parse keep_best: ``"val_loss:min"`` or ``["val_loss", "min"]``."""
    parts = value.rsplit(":", 1) if isinstance(value, str) else value
    if (
        not isinstance(parts, list | tuple)
        or len(parts) != 2
        or not isinstance(parts[0], str)
        or not parts[0]
        or parts[1] not in ("min", "max")
    ):
        raise ConfigError(f"expected METRIC:min or METRIC:max, not {value!r}")
    return (parts[0], parts[1])


@dataclass(frozen=True, slots=True)
class Key:
    """One setting: its TOML name (``table.key``), environment variable, parser and default."""

    name: str
    env: str
    parse: Callable[[object], Any]
    default: Any
    help: str

    @property
    def field(self) -> str:
        return self.name.rpartition(".")[2]


_COUNT = _int(1, (1 << 31) - 1)  # an int32 ceiling: the largest count stores round-trip

KEYS: tuple[Key, ...] = (
    Key("url", "CKPTLITE_URL", _text, None, "store URL: a directory, memory://, postgresql://..."),
    Key("home", "CKPTLITE_HOME", _text, None, "directory of the local store (if no url)"),
    Key("durability", "CKPTLITE_DURABILITY", _choice(*DURABILITY), "safe", "none, safe or full"),
    Key("busy_timeout", "CKPTLITE_BUSY_TIMEOUT", _seconds, 30.0, "seconds to wait for a lock"),
    Key("chunk_size", "CKPTLITE_CHUNK_SIZE", _int(4096, 64 << 20), 1 << 20, "chunk bytes"),
    Key("compression_level", "CKPTLITE_COMPRESSION_LEVEL", _int(-7, 22), 1, "zstd level"),
    Key("group_access", "CKPTLITE_GROUP_ACCESS", _bool, False, "new files group-accessible"),
    Key("hash", "CKPTLITE_HASH", _choice(*HASHES), None, "digest of new stores (blake3)"),
    Key("retention.keep_last", "CKPTLITE_KEEP_LAST", _COUNT, None, "prune: keep N"),
    Key(
        "retention.keep_every",
        "CKPTLITE_KEEP_EVERY",
        _COUNT,
        None,
        "prune: every Nth",
    ),
    Key("retention.max_age", "CKPTLITE_MAX_AGE", parse_duration, None, "prune: drop older"),
    Key("retention.keep_best", "CKPTLITE_KEEP_BEST", _best, None, "prune: METRIC:min|max"),
)
_BY_NAME = {k.name: k for k in KEYS}


@dataclass(frozen=True, slots=True)
class Settings:
    """The effective configuration; ``sources[key]`` says where each value came from.

    A source is ``"default"``, ``"file <path>"``, ``"env <VAR>"`` or ``"flag <--option>"``.
    """

    url: str
    durability: str
    busy_timeout: float
    chunk_size: int
    compression_level: int
    group_access: bool
    hash: str | None
    keep_last: int | None
    keep_every: int | None
    max_age: timedelta | None
    keep_best: tuple[str, str] | None
    config_file: Path
    config_file_exists: bool
    sources: Mapping[str, str] = field(default_factory=dict)

    def items(self) -> list[tuple[str, Any, str]]:
        """Return (key, value, source) for every key, in a stable order."""
        names = ["url", *(k.name for k in KEYS if k.name not in ("url", "home"))]
        return [(n, getattr(self, _BY_NAME[n].field), self.sources[n]) for n in names]


def config_path(environ: Mapping[str, str] | None = None) -> Path:
    """Return the configuration file's path: $CKPTLITE_CONFIG, else the user config dir."""
    env = os.environ if environ is None else environ
    if env.get("CKPTLITE_CONFIG"):
        return Path(env["CKPTLITE_CONFIG"]).expanduser()
    import platformdirs

    return Path(platformdirs.user_config_dir("ckptlite", appauthor=False)) / "ckptlite.toml"


def _read_doc(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(
            f"cannot read the configuration file {path}: {e}",
            hint="Fix the file's TOML syntax, or point $CKPTLITE_CONFIG at another file.",
        ) from e


def _read_file(path: Path) -> dict[str, Any]:
    doc = _read_doc(path)
    _file_remotes(doc, path)  # checked here too: a bad [remotes] table is an error anywhere
    flat: dict[str, Any] = {}
    for key, value in doc.items():
        if key == "remotes":
            continue
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    unknown = sorted(set(flat) - set(_BY_NAME))
    if unknown:
        raise ConfigError(
            f"{path}: unknown setting(s) {', '.join(unknown)}",
            hint=f"Known settings: {', '.join(sorted(_BY_NAME))}.",
        )
    return flat


def load(
    overrides: Mapping[str, tuple[Any, str]] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Return the effective settings; ``overrides`` maps a key to (value, flag name).

    Raises:
        ConfigError: the file is unreadable, or a value is invalid (the message names its source).

    >>> load({"url": ("memory://", "--store")}, environ={"CKPTLITE_CONFIG": "/nonexistent"}).url
    'memory://'
    """
    env = os.environ if environ is None else environ
    path = config_path(env)
    layers: list[tuple[str, dict[str, Any]]] = [(f"file {path}", _read_file(path))]
    layers.append(("env", {k.name: env[k.env] for k in KEYS if env.get(k.env)}))
    layers.append(("flag", {k: v for k, (v, _) in (overrides or {}).items() if v is not None}))
    values: dict[str, Any] = {k.name: k.default for k in KEYS}
    sources: dict[str, str] = {k.name: "default" for k in KEYS}
    url_layer = None
    for label, layer in layers:
        for name, raw in layer.items():
            key = _BY_NAME.get(name)
            if key is None:
                raise ConfigError(f"unknown setting {name!r}")
            if label == "env":
                source = f"env {key.env}"
            elif label == "flag":
                source = f"flag {(overrides or {})[name][1]}"
            else:
                source = label
            try:
                values[name] = key.parse(raw)
            except ConfigError as e:
                hint = e.hint
                if hint == ConfigError.default_hint:  # a bare parser error: say where to fix it
                    where = {"env": f"${key.env}", "flag": (overrides or {}).get(name, ("", ""))[1]}
                    hint = f"Give {where.get(label) or label} a valid value ({key.help})."
                raise ConfigError(f"{name} from {source}: {e.message}", hint=hint) from None
            sources[name] = source
            if name in ("url", "home"):
                url_layer = layer
    if url_layer is not None and "url" not in url_layer:
        values["url"], sources["url"] = values["home"], sources["home"]
    elif url_layer is None:
        import platformdirs

        values["url"] = platformdirs.user_data_dir("ckptlite", appauthor=False)
        sources["url"] = "default"
    values.pop("home")
    return Settings(
        **{_BY_NAME[k].field: v for k, v in values.items()},
        config_file=path,
        config_file_exists=path.is_file(),
        sources=sources,
    )


# -- named remotes ---------------------------------------------------------------------

#: A remote's name: a bare word, so it can never be mistaken for a path or a URL.
REMOTE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
_REMOTE_ENV = "CKPTLITE_REMOTE_"


@dataclass(frozen=True, slots=True)
class Remote:
    """A named store: its URL and where the name was defined (file or environment)."""

    name: str
    url: str
    source: str


def _env_name(name: str) -> str:
    return _REMOTE_ENV + name.upper().replace("-", "_")


def _file_remotes(doc: Mapping[str, Any], path: Path) -> dict[str, Remote]:
    table = doc.get("remotes", {})
    if not isinstance(table, dict):
        raise ConfigError(
            f"{path}: [remotes] must be a table of [remotes.NAME] tables",
            hint='For example:\n[remotes.hub]\nurl = "postgresql://db.example/ckpts"',
        )
    out: dict[str, Remote] = {}
    for name, entry in table.items():
        url = entry.get("url") if isinstance(entry, dict) else None
        if not REMOTE_NAME.match(name) or not isinstance(url, str) or not url:
            raise ConfigError(
                f"{path}: remote {name!r} needs a name of letters, digits, - and _ and "
                'a url = "..."',
                hint='For example:\n[remotes.hub]\nurl = "postgresql://db.example/ckpts"',
            )
        out[name] = Remote(name, url, f"file {path}")
    return out


def remotes(environ: Mapping[str, str] | None = None) -> dict[str, Remote]:
    """Return the configured remotes by name: ``ckptlite.toml``, then ``$CKPTLITE_REMOTE_*``.

    Raises:
        ConfigError: the file is unreadable or a remote in it is malformed.

    >>> remotes({"CKPTLITE_CONFIG": "/nonexistent", "CKPTLITE_REMOTE_HUB": "memory://"})
    {'hub': Remote(name='hub', url='memory://', source='env CKPTLITE_REMOTE_HUB')}
    """
    env = os.environ if environ is None else environ
    path = config_path(env)
    found = _file_remotes(_read_doc(path), path)
    by_env = {_env_name(n): n for n in found}
    for var, url in sorted(env.items()):
        if var.startswith(_REMOTE_ENV) and url and len(var) > len(_REMOTE_ENV):
            name = by_env.get(var) or var[len(_REMOTE_ENV) :].lower()
            found[name] = Remote(name, url, f"env {var}")
    return found


def _check_remote_name(name: str) -> None:
    if not isinstance(name, str) or not REMOTE_NAME.match(name):
        raise ConfigError(
            f"bad remote name {name!r}",
            hint="A remote's name is a bare word: a letter, then letters, digits, - or _ "
            "(no '/' and no scheme, so it is never taken for a path or a URL).",
        )


def _write_config(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def add_remote(name: str, url: str, environ: Mapping[str, str] | None = None) -> Path:
    """Add ``[remotes.NAME] url = URL`` to the configuration file; return its path.

    Raises:
        ConfigError: a bad name or URL, or the name is defined already.
    """
    _check_remote_name(name)
    if not isinstance(url, str) or not url.strip() or "\n" in url:
        raise ConfigError(f"bad URL {url!r} for remote {name}", hint="Give a URL or a path.")
    env = os.environ if environ is None else environ
    path = config_path(env)
    existing = remotes(env).get(name)
    if existing is not None:
        raise ConfigError(
            f"remote {name} exists already ({existing.url}, from {existing.source})",
            hint=f"`ckptlite remote remove {name}` first, or pick another name.",
        )
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = ""
    if text and not text.endswith("\n"):
        text += "\n"
    # JSON string escapes are TOML basic-string escapes.
    text += (
        f"{chr(10) if text else ''}[remotes.{name}]\nurl = {json.dumps(url, ensure_ascii=False)}\n"
    )
    _write_config(path, text)
    return path


def remove_remote(name: str, environ: Mapping[str, str] | None = None) -> Path:
    """Remove ``[remotes.NAME]`` from the configuration file; return its path.

    Raises:
        ConfigError: no such remote in the file (or it comes from the environment).
    """
    _check_remote_name(name)
    env = os.environ if environ is None else environ
    path = config_path(env)
    found = remotes(env).get(name)
    if found is None or not found.source.startswith("file "):
        where = f"it is set by {found.source}: unset it there" if found else "no such remote"
        raise ConfigError(
            f"cannot remove remote {name}: {where}",
            hint="`ckptlite remote list` shows the remotes and where each comes from.",
        )
    header = re.compile(rf"^\s*\[\s*remotes\s*\.\s*(\"?){re.escape(name)}\1\s*\]\s*(#.*)?$")
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    out: list[str] = []
    skipping = False
    for line in lines:
        if header.match(line):
            skipping = True
            continue
        if skipping and line.lstrip().startswith("["):
            skipping = False
        if not skipping:
            out.append(line)
    text = "".join(out)
    try:
        still = name in _file_remotes(tomllib.loads(text), path)
    except tomllib.TOMLDecodeError:
        still = True  # the edit would break the file: leave it as it is
    if still:
        raise ConfigError(
            f"cannot remove remote {name} from {path}: it is not written as [remotes.{name}]",
            hint="Edit the file by hand.",
        )
    _write_config(path, text)
    return path
