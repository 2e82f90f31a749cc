"""Configuration: defaults < ckptlite.toml < environment < flags, each value with its source."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import platformdirs
import pytest

import ckptlite
from ckptlite import config


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for var in list(os.environ):
        if var.startswith("CKPTLITE_") and var not in ("CKPTLITE_TEST_PG", "CKPTLITE_REQUIRE_PG"):
            monkeypatch.delenv(var)
    path = tmp_path / "ckptlite.toml"
    monkeypatch.setenv("CKPTLITE_CONFIG", str(path))
    return path


@pytest.fixture
def cfg_file(tmp_path: Path) -> Path:
    return tmp_path / "ckptlite.toml"


def test_defaults_without_file_or_env(cfg_file: Path) -> None:
    s = config.load()
    assert s.url == platformdirs.user_data_dir("ckptlite", appauthor=False)
    assert (s.durability, s.busy_timeout, s.chunk_size) == ("safe", 30.0, 1 << 20)
    assert s.keep_last is None and s.max_age is None
    assert set(s.sources.values()) == {"default"}
    assert s.config_file == cfg_file and not s.config_file_exists


def test_default_path_is_the_user_config_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CKPTLITE_CONFIG")
    expected = Path(platformdirs.user_config_dir("ckptlite", appauthor=False)) / "ckptlite.toml"
    assert config.config_path() == expected


def test_file_then_env_then_flags(cfg_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg_file.write_text(
        'url = "/from/file"\ndurability = "full"\nchunk_size = 65536\n'
        '[retention]\nkeep_last = 5\nmax_age = "30d"\n'
    )
    s = config.load()
    assert (s.url, s.durability, s.chunk_size, s.keep_last) == ("/from/file", "full", 65536, 5)
    assert s.max_age == timedelta(days=30)
    assert s.sources["url"] == f"file {cfg_file}" and s.sources["retention.keep_last"].startswith(
        "file"
    )

    monkeypatch.setenv("CKPTLITE_URL", "/from/env")
    monkeypatch.setenv("CKPTLITE_DURABILITY", "none")
    monkeypatch.setenv("CKPTLITE_KEEP_LAST", "7")
    s = config.load()
    assert (s.url, s.durability, s.keep_last, s.chunk_size) == ("/from/env", "none", 7, 65536)
    assert s.sources["durability"] == "env CKPTLITE_DURABILITY"
    assert s.sources["chunk_size"] == f"file {cfg_file}"

    s = config.load({"url": ("/from/flag", "--store"), "retention.keep_last": (2, "--keep-last")})
    assert (s.url, s.keep_last) == ("/from/flag", 2)
    assert s.sources["url"] == "flag --store"
    assert s.sources["retention.keep_last"] == "flag --keep-last"
    keys = [k for k, _, _ in s.items()]
    assert keys[0] == "url" and "home" not in keys and "retention.max_age" in keys


def test_home_is_the_url_of_its_layer(cfg_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg_file.write_text('url = "/file/url"\n')
    monkeypatch.setenv("CKPTLITE_HOME", "/env/home")
    s = config.load()
    assert s.url == "/env/home" and s.sources["url"] == "env CKPTLITE_HOME"
    monkeypatch.setenv("CKPTLITE_URL", "memory://")
    assert config.load().url == "memory://"  # within a layer, url wins over home


def test_bad_values_name_their_source(cfg_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CKPTLITE_DURABILITY", "sometimes")
    with pytest.raises(ckptlite.ConfigError, match="durability from env CKPTLITE_DURABILITY"):
        config.load()
    monkeypatch.delenv("CKPTLITE_DURABILITY")
    cfg_file.write_text("chunk_size = 12\n")
    with pytest.raises(ckptlite.ConfigError, match=r"chunk_size from file .*4096"):
        config.load()
    cfg_file.write_text("[retention]\nmax_age = 'forever'\n")
    with pytest.raises(ckptlite.ConfigError, match="not a duration"):
        config.load()


def test_unknown_keys_and_broken_toml_are_errors(cfg_file: Path) -> None:
    cfg_file.write_text('durabilty = "full"\n')
    with pytest.raises(ckptlite.ConfigError, match=r"unknown setting.*durabilty") as e:
        config.load()
    assert "durability" in e.value.hint
    cfg_file.write_text("url = \n")
    with pytest.raises(ckptlite.ConfigError, match="cannot read the configuration file"):
        config.load()


@pytest.mark.parametrize(
    ("text", "expected"),
    [("90", 90), ("90s", 90), ("45m", 2700), ("12h", 43200), ("1.5d", 129600), ("2w", 1209600)],
)
def test_durations(text: str, expected: float) -> None:
    assert config.parse_duration(text).total_seconds() == expected


def test_open_without_url_honours_the_config(
    cfg_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "configured"
    cfg_file.write_text(f'url = "{store}"\ndurability = "none"\nbusy_timeout = "2m"\n')
    with ckptlite.open() as mgr:
        assert mgr.url == str(store)
        assert mgr.config.durability == "none" and mgr.config.busy_timeout == 120
        mgr.save("p", 1)
    assert (store / "ckptlite.db").is_file()
    # environment variables still win over the file, as before
    monkeypatch.setenv("CKPTLITE_URL", "memory://")
    monkeypatch.setenv("CKPTLITE_DURABILITY", "full")
    with ckptlite.open() as mgr:
        assert mgr.url.startswith("memory://") and mgr.config.durability == "full"
    # and an explicit argument wins over both
    with ckptlite.open(tmp_path / "explicit", durability="safe") as mgr:
        assert mgr.url == str(tmp_path / "explicit") and mgr.config.durability == "safe"


def test_open_with_create_false_refuses_a_missing_store(tmp_path: Path) -> None:
    with pytest.raises(ckptlite.ConfigError, match="no ckptlite store"):
        ckptlite.open(tmp_path / "absent", create=False)
    assert not (tmp_path / "absent").exists()


def test_remotes_from_file_and_environment_and_edits_keep_the_rest(
    cfg_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg_file.write_text('# my settings\ndurability = "full"\n\n[retention]\nkeep_last = 3\n')
    config.add_remote("hub", 'postgresql://db/x?options=-c "a"')
    config.add_remote("backup-1", "/mnt/b")
    found = config.remotes()
    assert found["hub"].url == 'postgresql://db/x?options=-c "a"'
    assert found["backup-1"].source == f"file {cfg_file}"
    monkeypatch.setenv("CKPTLITE_REMOTE_BACKUP_1", "memory://")
    assert config.remotes()["backup-1"].url == "memory://"  # the environment wins
    monkeypatch.delenv("CKPTLITE_REMOTE_BACKUP_1")
    config.remove_remote("hub")
    text = cfg_file.read_text()
    assert "# my settings" in text and "keep_last = 3" in text and "hub" not in text
    assert set(config.remotes()) == {"backup-1"}
    assert config.load().durability == "full" and config.load().keep_last == 3
    with pytest.raises(ckptlite.ConfigError):
        config.add_remote("a/b", "memory://")
    with pytest.raises(ckptlite.ConfigError):
        config.remove_remote("nope")


def test_a_malformed_remote_is_a_config_error(cfg_file: Path) -> None:
    cfg_file.write_text('[remotes.hub]\nurl = ""\n')
    with pytest.raises(ckptlite.ConfigError) as err:
        config.load()
    assert "remote 'hub'" in err.value.message and err.value.hint


def test_resolve_location_never_takes_a_bare_name_for_a_new_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ckptlite._stores import LIBPQ_DEFAULT, resolve_location

    monkeypatch.chdir(tmp_path)
    assert resolve_location("postgres") == LIBPQ_DEFAULT
    assert resolve_location("./x") == "./x" and resolve_location("a/b") == "a/b"
    (tmp_path / "old").mkdir()
    assert resolve_location("old") == "old"
    with pytest.raises(ckptlite.ConfigError):
        resolve_location("new")
    monkeypatch.setenv("CKPTLITE_REMOTE_POSTGRES", "postgresql://db.example/c")
    assert resolve_location("postgres") == "postgresql://db.example/c"
