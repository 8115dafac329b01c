"""The state directory under attack: writable by others, planted symlinks at the
temporary's name or in place of a state file, owned by someone else."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.zswapd.daemon import run_cli
from tests.zswapd.helpers import text_page
from zswapd import state
from zswapd.config import PoolConfig
from zswapd.pool import PagePool
from zswapd.state import StateError, load_pool, load_state_dir, save_pool, save_state_dir

SECRET = b"the victim's own bytes\n"


def _pool(name: str = "default") -> PagePool:
    pool = PagePool(name, PoolConfig(compressor="lz4"))
    pool.store([text_page(i) for i in range(8)])
    return pool


def _planted(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """A state directory with a symlink at NAME to a victim file outside it
    (SECRET, mode 0644): the directory and the victim."""
    victim = tmp_path / "victim"
    victim.write_bytes(SECRET)
    victim.chmod(0o644)
    directory = tmp_path / "state"
    directory.mkdir(mode=0o700)
    (directory / name).symlink_to(victim)
    return directory, victim


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o733, 0o1777])
def test_a_directory_others_can_write_is_refused(tmp_path: Path, mode: int) -> None:
    directory = tmp_path / "state"
    directory.mkdir()
    directory.chmod(mode)
    with pytest.raises(StateError, match="others can write"):
        save_state_dir([_pool()], directory)
    with pytest.raises(StateError, match="others can write"):
        load_state_dir(directory)
    assert os.listdir(directory) == []  # refused before anything was written
    assert stat.S_IMODE(directory.stat().st_mode) == mode  # and left for the operator


def test_the_daemon_refuses_to_start_on_a_world_writable_state_dir(tmp_path: Path) -> None:
    directory = tmp_path / "state"
    directory.mkdir()
    directory.chmod(0o777)
    out = run_cli("serve", "--http", "127.0.0.1:0", "--state-dir", str(directory), timeout=60)
    assert out.returncode == 2
    assert "mode 0777" in out.stderr and "refusing" in out.stderr, out.stderr


def test_a_readable_directory_is_accepted_and_a_new_one_is_0700(tmp_path: Path) -> None:
    made = tmp_path / "new" / "state"
    save_state_dir([_pool()], made)
    assert stat.S_IMODE(made.stat().st_mode) == 0o700
    shared = tmp_path / "systemd-style"
    shared.mkdir()
    shared.chmod(0o755)  # systemd's StateDirectory= default: others read, never write
    (path,) = save_state_dir([_pool()], shared)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in load_state_dir(shared)] == ["default"]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a directory away")
def test_a_directory_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "state"
    directory.mkdir(mode=0o700)
    os.chown(directory, 65534, 65534)
    with pytest.raises(StateError, match="owned by uid 65534"):
        save_state_dir([_pool()], directory)
    with pytest.raises(StateError, match="owned by uid 65534"):
        load_state_dir(directory)


def test_a_symlink_planted_at_the_old_temporary_name_is_not_written_through(
    tmp_path: Path,
) -> None:
    # The name every save used to write to, opened without O_EXCL / O_NOFOLLOW.
    directory, victim = _planted(tmp_path, ".default.zswapd.tmp")
    save_state_dir([_pool()], directory)
    assert victim.read_bytes() == SECRET
    assert stat.S_IMODE(victim.stat().st_mode) == 0o644


def test_temporaries_are_unpredictable_and_opened_exclusively(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = {state._temp_name("default") for _ in range(100)}
    assert len(names) == 100
    assert all(len(n) >= len(".default.zswapd..tmp") + 32 for n in names)  # 128 random bits
    # Even a name guessed right is not written through: O_CREAT | O_EXCL | O_NOFOLLOW.
    directory, victim = _planted(tmp_path, ".guessed.tmp")
    monkeypatch.setattr(state, "_temp_name", lambda name: ".guessed.tmp")
    with pytest.raises(FileExistsError):
        save_pool(_pool(), directory)
    assert victim.read_bytes() == SECRET
    assert not (directory / "default.zswapd").exists()


def test_a_symlinked_state_file_is_refused_not_followed(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    real = save_pool(_pool(), elsewhere)
    directory = tmp_path / "state"
    directory.mkdir(mode=0o700)
    (directory / "default.zswapd").symlink_to(real)
    with pytest.raises(StateError, match="symlink"):
        load_state_dir(directory)
    with pytest.raises(StateError, match="symlink"):
        load_pool(directory / "default.zswapd")
    out = run_cli("serve", "--http", "127.0.0.1:0", "--state-dir", str(directory), timeout=60)
    assert out.returncode == 2 and "is a symlink" in out.stderr, out.stderr


def test_saving_over_a_symlinked_state_file_replaces_the_link(tmp_path: Path) -> None:
    directory, victim = _planted(tmp_path, "default.zswapd")
    save_state_dir([_pool()], directory)
    assert victim.read_bytes() == SECRET
    assert not (directory / "default.zswapd").is_symlink()
    assert [p.name for p in load_state_dir(directory)] == ["default"]


def test_a_crash_left_temporary_is_cleared_at_start(tmp_path: Path) -> None:
    directory = tmp_path / "state"
    save_state_dir([_pool()], directory)
    left = directory / state._temp_name("default")
    left.write_bytes(b"half a file")
    assert [p.name for p in load_state_dir(directory)] == ["default"]
    assert not left.exists()
