"""The systemd unit's LimitNOFILE fits what the daemon asks of it at start."""

from __future__ import annotations

import re
from pathlib import Path

from zswapd.server import open_files_needed
from zswapd.settings import ServerSettings

UNIT = Path(__file__).resolve().parents[2] / "deploy" / "systemd" / "zswapd.service"


def test_limit_nofile_fits_every_frontend_at_the_defaults() -> None:
    m = re.search(r"^LimitNOFILE=(\d+)$", UNIT.read_text(), re.MULTILINE)
    assert m, "the unit sets no LimitNOFILE: the daemon would get the system's default"
    # HTTP, the wire protocol and NBD together, at the default --max-connections.
    every = ServerSettings(unix_socket="/run/zswapd/zswapd.sock", nbd="unix:/run/zswapd/nbd.sock")
    assert open_files_needed(every) <= int(m.group(1))
