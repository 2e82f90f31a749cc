"""Opening a store: the URL (argument, environment, config file), its options, its backend.

The manager's ``open_store`` checks every option here before anything is created,
then wraps the backend this module opens.
"""

from __future__ import annotations

import math
import os
import re
import urllib.parse
from collections.abc import Mapping
from pathlib import Path

from . import chunking
from . import config as _config
from ._paths import os_error, to_path
from .backends.base import Backend
from .errors import ConfigError, InvalidInputError
from .policies import CheckpointPolicy
from .types import DEFAULT_HASH, StorageConfig

__all__ = [
    "check_options",
    "check_policy",
    "open_backend",
    "resolve_location",
    "resolve_url",
    "store_is_read_only",
]


def resolve_url(url: str | os.PathLike[str] | None = None) -> str:
    """Return the store URL: ``url``, else the configured one (``ckptlite.config``).

    Unset, that is $CKPTLITE_URL, $CKPTLITE_HOME, ``ckptlite.toml``, the user data dir.
    """
    if url is not None:
        return os.fspath(url)
    return _config.load().url


#: A bare ``postgres`` (no remote of that name): the server libpq's environment names.
LIBPQ_DEFAULT = "postgresql://"


def resolve_location(text: str, environ: Mapping[str, str] | None = None) -> str:
    """Return the store URL a command-line location means (``sync --to/--from``).

    A URL (``scheme://``) or a path (it has a ``/``, or starts with ``.`` or ``~``)
    is itself. A bare name is a configured remote (``[remotes.NAME]`` in
    ckptlite.toml, or ``$CKPTLITE_REMOTE_NAME``); ``postgres`` or ``postgresql``
    with no such remote is the PostgreSQL server libpq's environment names (PGHOST,
    PGDATABASE, PGUSER, ~/.pgpass, service files); else an existing directory.

    Raises:
        ConfigError: a bare name that is none of these (nothing is created).

    >>> resolve_location("./ckpts"), resolve_location("memory://")
    ('./ckpts', 'memory://')
    """
    if "://" in text or "/" in text or os.sep in text or text.startswith((".", "~")):
        return text
    known = _config.remotes(environ)
    if text in known:
        return known[text].url
    if text in ("postgres", "postgresql"):
        return LIBPQ_DEFAULT
    if text and os.path.isdir(text):
        return text
    names = ", ".join(sorted(known)) or "none configured"
    raise ConfigError(
        f"{text!r} is not a configured remote, a URL or an existing path",
        hint=f"Remotes: {names}. Add one with `ckptlite remote add {text} URL`; write "
        f"./{text} for a (new) local directory, or postgresql://HOST/DB for PostgreSQL.",
    )


#: ckptlite's own parameters of a PostgreSQL URL; libpq's own ones pass through to it.
_PG_PARAMS = ("ckptlite_table", "ckptlite_prefix")


def _redact(url: str) -> str:
    return re.sub(r"^([a-z]+://[^:/@]*:)[^@]*@", r"\1***@", url)


def _check_url(url: str, readonly: bool) -> None:
    """Refuse URL parameters nobody reads, and ``readonly`` where it has no meaning.

    Raises:
        ConfigError: an unknown parameter, or readonly on memory://.
    """
    scheme = url.partition("://")[0] if "://" in url else ""
    if scheme in ("postgresql", "postgres"):
        query = urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query, keep_blank_values=True)
        unknown = sorted({k for k, _ in query if k.startswith("ckptlite_")} - set(_PG_PARAMS))
        if unknown:
            raise ConfigError(
                f"unknown ckptlite parameter(s) {', '.join(unknown)} in {_redact(url)}",
                hint=f"ckptlite reads {' and '.join(_PG_PARAMS)}; other parameters go to libpq "
                "(sslmode, application_name, connect_timeout, options, ...).",
            )
        return
    if "?" in url:
        raise ConfigError(
            f"{url!r}: {scheme + ':// URLs' if scheme else 'local store paths'} take no parameters",
            hint="Set options as open() arguments, $CKPTLITE_* variables or in ckptlite.toml; "
            "a '?' cannot be part of a local store's path.",
        )
    if scheme == "memory" and readonly:
        raise ConfigError(
            "readonly=True on memory:// has nothing to read: a memory store starts empty",
            hint="Open memory:// without readonly, or a directory with readonly=True.",
        )


def _local_path(url: str) -> Path:
    return to_path(url.removeprefix("file://"), "the store path", ConfigError)


def store_is_read_only(url: str | os.PathLike[str]) -> bool:
    """Tell whether ``url`` is an existing local store this process cannot write.

    Commands that only read open such a store with ``readonly=True``.
    """
    from .backends.local import DB_NAME, store_writable

    text = os.fspath(url)
    if not isinstance(text, str) or ("://" in text and not text.startswith("file://")):
        return False
    try:
        path = _local_path(text)
        return (path / DB_NAME).is_file() and not store_writable(path)
    except (ConfigError, OSError):
        return False  # open() reports what is wrong with it


def open_backend(config: StorageConfig, create: bool = True) -> Backend:
    url = config.url
    _check_url(url, config.readonly)
    if url.startswith("memory://"):
        from .backends.memory import MemoryBackend

        return MemoryBackend(url, hash_name=config.hash or DEFAULT_HASH)
    if url.startswith(("postgresql://", "postgres://")):
        try:
            from .backends.postgres import PostgresBackend  # type: ignore[import-not-found,unused-ignore]
        except ImportError as e:
            raise ConfigError(
                f"the postgres backend needs psycopg: {e}",
                hint="pip install 'ckptlite[postgres]'",
            ) from e
        backend: Backend = PostgresBackend(
            url, hash_name=config.hash or DEFAULT_HASH, readonly=config.readonly, create=create
        )
        return backend
    if "://" in url and not url.startswith("file://"):
        raise ConfigError(
            f"unknown store URL scheme in {url!r}",
            hint="Use a directory path, file://PATH, memory:// or postgresql://...",
        )
    from .backends.local import DB_NAME, LocalBackend

    path = _local_path(url)
    try:
        absent = not (path / DB_NAME).is_file()
    except OSError as e:
        raise os_error(e, f"opening {path}", ConfigError) from e
    if (not create or config.readonly) and absent:
        raise ConfigError(
            f"no ckptlite store at {path}",
            hint="Check --store / $CKPTLITE_URL (`ckptlite config` shows where it came from).",
        )
    return LocalBackend(
        path,
        durability=config.durability,
        busy_timeout=config.busy_timeout,
        group_access=config.group_access,
        readonly=config.readonly,
        hash_name=config.hash or DEFAULT_HASH,
    )


def check_options(
    url: object,
    durability: object,
    chunk_size: object,
    compression_level: object,
    busy_timeout: object,
    flags: Mapping[str, object],
    policy: object,
    max_pending: object,
    hash_name: object = None,
) -> None:
    """Refuse a bad open() argument before anything is created.

    Raises:
        ConfigError: the first bad argument.
    """
    if not isinstance(url, str | os.PathLike) or os.fspath(url) in ("", b""):
        raise ConfigError(
            f"the store URL must be a non-empty str or path, not {url!r}",
            hint="Pass a directory, file://DIR, memory:// or postgresql://..., or None for "
            "the configured store.",
        )
    if durability not in _config.DURABILITY:
        raise ConfigError(f"durability must be one of {_config.DURABILITY}, not {durability!r}")
    if (
        not isinstance(chunk_size, int)
        or isinstance(chunk_size, bool)
        or not 4096 <= chunk_size <= 64 << 20
    ):
        raise ConfigError(f"chunk_size must be an int from 4 KiB to 64 MiB, not {chunk_size!r}")
    if (
        not isinstance(compression_level, int)
        or isinstance(compression_level, bool)
        or not -7 <= compression_level <= 22
    ):
        raise ConfigError(
            f"compression_level must be an int from -7 to 22, not {compression_level!r}"
        )
    if (
        not isinstance(busy_timeout, int | float)
        or isinstance(busy_timeout, bool)
        or not math.isfinite(busy_timeout)
        or not 0 < busy_timeout <= 2_000_000  # SQLite takes milliseconds as a C int
    ):
        raise ConfigError(f"busy_timeout must be seconds > 0, not {busy_timeout!r}")
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be True or False, not {value!r}")
    if policy is not None and not isinstance(policy, CheckpointPolicy):
        raise ConfigError(f"policy must be a CheckpointPolicy, not {policy!r}")
    if not isinstance(max_pending, int) or isinstance(max_pending, bool) or max_pending < 1:
        raise ConfigError(f"max_pending must be a positive int, not {max_pending!r}")
    if hash_name is not None:
        chunking.check_hash(hash_name)


def check_policy(policy: object) -> None:
    if policy is not None and not isinstance(policy, CheckpointPolicy):
        raise InvalidInputError(f"policy must be a CheckpointPolicy, not {policy!r}")
