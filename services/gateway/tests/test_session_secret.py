from __future__ import annotations

import stat
from pathlib import Path

from gateway.settings import GatewaySettings
from gateway.spec import session_secret


def test_the_session_secret_is_made_once_kept_private_and_reused(tmp_path: Path) -> None:
    settings = GatewaySettings(data_dir=tmp_path)
    first = session_secret(settings)
    assert len(first) >= 40
    assert session_secret(settings) == first
    assert stat.S_IMODE((tmp_path / "session-secret").stat().st_mode) == 0o600
    assert session_secret(GatewaySettings(data_dir=tmp_path, session_secret="given")) == "given"
