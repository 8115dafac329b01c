"""Server settings from their one description (SERVER_OPTIONS): each reaches
ServerSettings the same from a flag, a ZSWAPD_* variable and a TOML file, and
the sources keep their precedence (flags, environment, file, defaults)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from zswapd.cli import build_parser
from zswapd.cli_client import pool_flags
from zswapd.errors import ConfigError
from zswapd.settings import (
    POOL_OPTIONS,
    SERVER_OPTIONS,
    PoolOption,
    ServerOption,
    ServerSettings,
    load_settings,
)

# A valid value of each option, as text (a flag's or a variable's).
SAMPLES = {
    "http": "127.0.0.1:1",
    "unix_socket": "wire.sock",
    "socket_mode": "660",
    "auth_token_file": "token",
    "metrics": "127.0.0.1:2",
    "nbd": "unix:nbd.sock",
    "max_pages_per_request": "16",
    "max_connections": "9",
    "state_dir": "state",
    "snapshot_interval": "2.5",
    "handshake_timeout": "3.5",
    "header_timeout": "4.5",
    "max_stale_handles": "7",
    "memory_limit": "1G",
    "max_pools": "5",
    "backing_dir": "clients",
    "backing_quota": "2G",
}


def test_every_option_has_a_sample_and_a_field() -> None:
    keys = [o.key for o in SERVER_OPTIONS]
    assert sorted(keys) == sorted(SAMPLES)
    fields = ServerSettings.__dataclass_fields__
    assert all(k in fields for k in keys)


@pytest.mark.parametrize("option", SERVER_OPTIONS, ids=lambda o: o.key)
def test_a_flag_a_variable_and_a_file_give_the_same_setting(
    option: ServerOption, tmp_path: Path
) -> None:
    text = SAMPLES[option.key]
    want = option.parse(text)
    args = build_parser().parse_args(["serve", option.flag, text])
    assert getattr(args, option.key) == want
    from_flag = load_settings(None, {}, {option.key: getattr(args, option.key)})
    from_env = load_settings(None, {option.env: text}, {})
    toml = tmp_path / "z.toml"
    # JSON's scalars are TOML's (strings quoted, numbers bare).
    toml.write_text(f"[server]\n{option.key} = {json.dumps(want)}\n")
    from_file = load_settings(str(toml), {}, {})
    for settings in (from_flag, from_env, from_file):
        assert getattr(settings, option.key) == want


def test_flags_beat_variables_beat_the_file(tmp_path: Path) -> None:
    toml = tmp_path / "z.toml"
    toml.write_text("[server]\nmax_pools = 3\nmax_connections = 4\nheader_timeout = 5\n")
    env = {"ZSWAPD_MAX_POOLS": "30", "ZSWAPD_MAX_CONNECTIONS": "40"}
    s = load_settings(str(toml), env, {"max_pools": 300})
    assert (s.max_pools, s.max_connections, s.header_timeout) == (300, 40, 5)


@pytest.mark.parametrize(
    ("source", "value"),
    [("env", "ZSWAPD_MAX_POOLS=zero"), ("file", 'max_pools = "3"'), ("file", "nosuch = 1")],
)
def test_a_bad_value_or_key_is_refused_naming_it(source: str, value: str, tmp_path: Path) -> None:
    toml = tmp_path / "z.toml"
    env: dict[str, Any] = {}
    if source == "env":
        key, _, text = value.partition("=")
        env[key] = text
        config = None
    else:
        toml.write_text(f"[server]\n{value}\n")
        config = str(toml)
    with pytest.raises(ConfigError) as refused:
        load_settings(config, env, {})
    assert value.split("=")[0].strip().lower().removeprefix("zswapd_") in str(refused.value).lower()


# A valid value of each pool option, as text, and the PoolConfig setting it makes.
POOL_SAMPLES = {
    "compressor": ("lz4hc:7", {"compressor": "lz4hc", "level": 7}),
    "level": ("5", {"level": 5}),
    "allocator": ("zbud", {"allocator": "zbud"}),
    "chain_size": ("4", {"chain_size": 4}),
    "limit_bytes": ("64M", {"limit_bytes": 64 << 20}),
    "huge_policy": ("reject", {"huge_policy": "reject"}),
    "backing_file": ("/tmp/zswapd-test.swap", {"backing_file": "/tmp/zswapd-test.swap"}),
    "backing_size": ("1M", {"backing_size": 1 << 20}),
    "writeback": ("lru", {"writeback": "lru"}),
    "writeback_limit": ("9", {"writeback_limit": 9}),
    "accept_threshold_percent": ("80", {"accept_threshold_percent": 80}),
    "recompress_algo": ("zstd", {"recompress_algo": "zstd"}),
    "recompress_level": ("12", {"recompress_level": 12}),
}


def test_every_pool_option_has_a_sample() -> None:
    assert sorted(o.key for o in POOL_OPTIONS) == sorted(POOL_SAMPLES)


@pytest.mark.parametrize("option", POOL_OPTIONS, ids=lambda o: o.key)
def test_a_pool_flag_and_its_variable_give_the_same_default_pool(option: PoolOption) -> None:
    text, want = POOL_SAMPLES[option.key]
    args = build_parser().parse_args(["serve", option.flag, text])
    from_flag = load_settings(None, {}, pool_flags(args)).pools["default"]
    from_env = load_settings(None, {option.env: text}, {}).pools["default"]
    for pool in (from_flag, from_env):
        assert {k: pool[k] for k in want} == want
    # pools create takes the same flag, with the same meaning.
    create = build_parser().parse_args(["pools", "create", "p", option.flag, text])
    assert {k: v for k, v in pool_flags(create).items() if v is not None} == want


@pytest.mark.parametrize("action", [["pools", "set", "p"], ["pools", "create", "p"], ["serve"]])
def test_a_bad_whole_number_is_refused_in_argparse_words(
    action: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([*action, "--writeback-limit", "x"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--writeback-limit: invalid int value: 'x'" in err and "literal" not in err


# A wrongly typed allocator option, and what the refusal must say: the option as
# written and what it must be (a boolean is no integer, nor an integer a boolean).
BAD_ALLOCATOR_OPTIONS = [
    (
        {"class_step": "8"},
        "allocator_options: class_step must be a multiple of 8 in 8..4096 (an integer), not '8'",
    ),
    (
        {"class_step": 8.5},
        "allocator_options: class_step must be a multiple of 8 in 8..4096 (an integer), not 8.5",
    ),
    (
        {"class_step": True},
        "allocator_options: class_step must be a multiple of 8 in 8..4096 (an integer), not True",
    ),
    (
        {"class_step": 12},
        "allocator_options: class_step must be a multiple of 8 in 8..4096 (an integer), not 12",
    ),
    ({"header": False}, "allocator_options: header must be 0 or 8 (an integer), not False"),
    (
        {"empty_cache": "2"},
        "allocator_options: empty_cache must be an integer in 0..65536, not '2'",
    ),
    ({"merge_classes": 1}, "allocator_options: merge_classes must be true or false, not 1"),
    (
        {"class_sizes": [64, "128"]},
        "allocator_options: class_sizes must be a non-empty list of integers",
    ),
    ({"chain_size": 4}, "allocator_options: chain_size is a pool setting, not an allocator option"),
    ({"class_stepp": 16}, "unknown allocator option 'class_stepp'; the options are empty_cache"),
]


def test_a_wrongly_typed_allocator_option_is_one_clear_refusal_over_http() -> None:
    import httpx

    from tests.zswapd.daemon import start_daemon

    d = start_daemon()
    try:
        with httpx.Client(base_url=d.url, timeout=60) as h:
            for options, said in BAD_ALLOCATOR_OPTIONS:
                for allocator in ("zsmalloc", "zbud"):
                    body = {"allocator": allocator, "allocator_options": options}
                    r = h.put("/v1/pools/typed", json=body)
                    assert r.status_code == 400, (options, r.text)
                    assert r.json()["error"] == "bad_config", (options, r.text)
                    assert r.json()["detail"].startswith(said), (options, r.text)
                    assert "\n" not in r.json()["detail"]
            # Nothing was made: the name is free, and good options still build.
            assert h.get("/v1/pools").json()["pools"] == ["default"]
            r = h.put("/v1/pools/typed", json={"allocator_options": {"class_step": 24}})
            assert r.status_code == 201, r.text
    finally:
        assert d.stop() == 0, d.log


@pytest.mark.parametrize(
    ("line", "said"),
    [
        ('allocator_options = {class_step = "8"}', BAD_ALLOCATOR_OPTIONS[0][1]),
        ("allocator_options = {class_step = 8.5}", BAD_ALLOCATOR_OPTIONS[1][1]),
        ("allocator_options = {class_step = true}", BAD_ALLOCATOR_OPTIONS[2][1]),
        ("allocator_options = [8]", "allocator_options must be an object of option: value"),
        ("chain_size = true", "chain_size must be an integer in 1..16, not True"),
        ("compressor = 5", "compressor must be a string, not 5"),
        (
            'accept_threshold_percent = "90"',
            "accept_threshold_percent must be an integer in 0..100",
        ),
    ],
)
def test_a_wrongly_typed_pool_setting_in_a_config_file_is_one_line(
    line: str, said: str, tmp_path: Path
) -> None:
    import subprocess
    import sys

    toml = tmp_path / "z.toml"
    toml.write_text(f"[pools.typed]\n{line}\n")
    with pytest.raises(ConfigError, match="^" + re.escape(said)):
        load_settings(str(toml), {}, {}).pool_configs()
    # The daemon started on it says the same, in one line, and stops.
    out = subprocess.run(
        [sys.executable, "-m", "zswapd", "serve", "--http", "127.0.0.1:0", "--config", str(toml)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0
    assert out.stderr.startswith(f"zswapd serve: {said}"), out.stderr
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr, out.stderr
