"""Key names are printable text: a name cannot rewrite or disguise a line of `keys list`."""

from __future__ import annotations

import re
import unicodedata

import pytest

from functions.core.keys.schemas import KEY_NAME_PATTERN, LOOKALIKE_SCRIPTS, name_problem
from tests.functions.conftest import Api
from tests.support.inprocess import InProcessGateway

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


# Unicode's Default_Ignorable_Code_Point (DerivedCoreProperties.txt, Unicode 14 and 15).
DEFAULT_IGNORABLE = [
    (0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160),
    (0x17B4, 0x17B5), (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E),
    (0x2060, 0x206F), (0x3164, 0x3164), (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8), (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A),
    (0xE0000, 0xE0FFF),
]  # fmt: skip


def refused_anywhere(char: str) -> bool:
    """The rule, said again from Unicode's data: an assigned character Python does not
    print, or a default-ignorable one."""
    code = ord(char)
    return any(a <= code <= b for a, b in DEFAULT_IGNORABLE) or (
        unicodedata.category(char) != "Cn" and not char.isprintable()
    )


def test_the_pattern_is_the_rule_for_every_code_point() -> None:
    """Every code point, beside a letter and alone: the pattern (what the OpenAPI document
    shows) admits exactly what the rule allows, and the service checks with it."""
    pattern = re.compile(KEY_NAME_PATTERN)
    for code in range(0x110000):
        if 0xD800 <= code <= 0xDFFF:
            continue  # not characters: no JSON carries one (the service refuses them)
        char = chr(code)
        allowed = not refused_anywhere(char) and script_of(char) in ("", "Latin")
        assert (pattern.search("a" + char) is not None) == allowed, hex(code)
        assert (name_problem("a" + char) is None) == allowed, hex(code)
        visible = not refused_anywhere(char) and not (
            char.isspace() or char in "\u2800" or 0x300 <= code <= 0x36F
        )
        if pattern.search(char) is not None:
            assert visible, hex(code)
    assert name_problem("a\ud800") is not None
    assert name_problem("name\n") is not None
    assert pattern.search("name\n") is None


def script_of(char: str) -> str:
    """Latin, Greek or Cyrillic for a letter Unicode names so (full-width ones too) in the
    Basic Multilingual Plane, else ''."""
    if ord(char) > 0xFFFF or unicodedata.category(char)[0] != "L":
        return ""
    words = unicodedata.name(char, "").split(" ")
    if words[0] in ("FULLWIDTH", "HALFWIDTH"):
        words = words[1:]
    return words[0].title() if words[0] in ("LATIN", "GREEK", "CYRILLIC") else ""


def test_the_look_alike_scripts_are_those_unicode_names() -> None:
    for script, ranges in LOOKALIKE_SCRIPTS.items():
        listed = {code for first, last in ranges for code in range(first, last + 1)}
        named = {code for code in range(0x10000) if script_of(chr(code)) == script}
        assert listed == named, script
    for text, mixed in [("Ωmega", "Latin and Greek"), ("p\u0430y", "Latin and Cyrillic")]:
        problem = name_problem(text)
        assert problem is not None
        assert f"may not mix {mixed} letters" in problem


# (name, whether the pattern admits it): the sample the service must agree with, both ways.
SAMPLE = [
    ("billing-service", True),
    ("Ωmega", False),  # Greek and Latin letters
    ("Ομάδα", True),
    ("команда 7", True),
    ("p\u0430ypal", False),  # a Cyrillic a (U+0430) among Latin letters
    ("cafe\u0301", True),
    ("x\u034f", False),
    ("x\ufe0f", False),
    ("x\U000e0100", False),
    ("x\U000e01ef", False),
    ("x\u180b", False),
    ("x\u2065", False),
    ("trailing\n", False),
    ("\u0301", False),
    ("\u2800", False),
    ("\U0001f680 launch", True),
    ("\U000f0000", False),
    ("x\u0378", True),  # not assigned yet: shown as a box, not hidden
]


@pytest.mark.parametrize(("name", "admitted"), SAMPLE)
async def test_the_service_accepts_what_the_documented_pattern_admits(
    inprocess: InProcessGateway, name: str, admitted: bool
) -> None:
    document = (await inprocess.admin.get("/schema/openapi.json")).json()
    pattern = document["components"]["schemas"]["ApiKeyCreate"]["properties"]["name"]["pattern"]
    assert pattern == KEY_NAME_PATTERN
    assert (re.search(pattern, name) is not None) == admitted
    response = await inprocess.admin.post("/v1/keys", json={"name": name})
    if admitted:
        assert response.status_code == 201, response.text
        assert response.json()["name"] == name
    else:
        assert response.status_code == 400, response.text
        assert response.json()["error"]["details"]["field"] == "name"


async def test_a_name_that_looks_like_an_active_keys_is_a_409(
    inprocess: InProcessGateway,
) -> None:
    first = await inprocess.admin.post("/v1/keys", json={"name": "billing"})
    assert first.status_code == 201, first.text
    for lookalike in (
        "Billing",
        "BILLING",
        "\uff42\uff49\uff4c\uff4c\uff49\uff4e\uff47",
        "\U0001d41billing",  # a mathematical bold b
    ):
        response = await inprocess.admin.post("/v1/keys", json={"name": lookalike})
        assert response.status_code == 409, response.text
        error = response.json()["error"]
        assert error["details"] == {"field": "name", "key_id": first.json()["id"]}
        assert "looks like" in error["message"]
    # The same name again is a rotation: allowed.
    again = await inprocess.admin.post("/v1/keys", json={"name": "billing"})
    assert again.status_code == 201, again.text
    for key in (first.json(), again.json()):
        revoked = await inprocess.admin.delete(f"/v1/keys/{key['id']}")
        assert revoked.status_code in (200, 204), revoked.text
    # Once no active key looks like it, the name is free.
    later = await inprocess.admin.post("/v1/keys", json={"name": "Billing"})
    assert later.status_code == 201, later.text
