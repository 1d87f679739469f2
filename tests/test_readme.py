"""The README stays true: every setting the code reads is in its Settings table."""

from __future__ import annotations

import re
from pathlib import Path

from functions.core.settings import Settings, env_name

README = Path(__file__).parents[1] / "README.md"


def test_every_setting_is_documented() -> None:
    documented = set(re.findall(r"`(SWITCHBOARD_[A-Z0-9_]+)`", README.read_text()))
    missing = [env_name(field) for field in Settings.__struct_fields__]
    missing = [name for name in missing if name not in documented]
    assert missing == [], f"settings missing from the README: {missing}"
