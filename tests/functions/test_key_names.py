"""Key names are printable text: a name cannot rewrite or disguise a line of `keys list`."""

from __future__ import annotations

import pytest

from tests.functions.conftest import Api

REFUSED = [
    "two\nlines",
    "carriage\rreturn",
    "tab\there",
    "nul\x00byte",
    "esc\x1b[2Kfake-admin",
    "bell\x07",
    "del\x7f",
    "c1\x85next-line",
    "rtl\u202eoverride",
    "zero\u200bwidth",
    "bom\ufeff",
    "line\u2028separator",
    "no\u00a0break",
    "tag\U000e0041beyond-the-bmp",
    "   ",
    # Printable, but nothing shows.
    "\u3164",
    "\u115f",
    "\u2800",
    "\u0301",
    " \u0301\u0302 ",
    "\u3164\u3164",
]


@pytest.mark.parametrize("name", REFUSED)
async def test_a_name_with_control_or_invisible_characters_is_a_400_naming_the_field(
    api: Api, name: str
) -> None:
    response = await api.admin.post("/v1/keys", json={"name": name})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] in ("validation_error", "bad_request")
    assert "name" in error["message"]
    # Said in words, never as the pattern behind it.
    assert "printable" in error["message"] or "NUL" in error["message"]
    assert "[^" not in error["message"]
    assert "regex" not in error["message"]
    listed = (await api.admin.get("/v1/keys")).json()
    keys = listed["data"] if isinstance(listed, dict) else listed
    assert name not in {key["name"] for key in keys}


async def test_printable_names_in_any_script_are_kept(api: Api) -> None:
    for name in ("billing-service", "café crème", "会计 team", "ops (eu-west)", "é", "한글"):
        response = await api.admin.post("/v1/keys", json={"name": name})
        assert response.status_code == 201, response.text
        assert response.json()["name"] == name
