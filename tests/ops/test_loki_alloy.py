"""Loki's and Alloy's configs, as far as this machine can prove them.

Neither ships a validator on PyPI, Debian or npm, so these tests prove less than promtool
or Caddy do: the Alloy file is parsed by a small parser of Alloy's syntax (blocks,
attributes, strings, lists, objects, references), each component and argument is one
Alloy's reference documents for it, and every reference points at a component defined in
the file; the Loki file is valid YAML whose every key is in Loki 3's configuration
reference, with the settings that must agree (retention and its delete store, TSDB and
structured metadata for Alloy's request ids, paths on the mounted volume, ports) checked.
That Alloy and Loki start with them is not proven here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml

from tests.ops.tools import MONITORING, REPO

ALLOY = MONITORING / "alloy" / "config.alloy"
LOKI = MONITORING / "loki" / "loki.yml"

# From Alloy's component reference (v1.x): the arguments and blocks of the components used.
ALLOY_COMPONENTS: dict[str, dict[str, set[str]]] = {
    "discovery.docker": {
        "args": {"host", "port", "refresh_interval", "match_first_network"},
        "blocks": {"filter", "http_headers"},
        "exports": {"targets"},
    },
    "discovery.relabel": {"args": {"targets"}, "blocks": {"rule"}, "exports": {"output", "rules"}},
    "loki.source.docker": {
        "args": {"host", "targets", "forward_to", "labels", "relabel_rules", "refresh_interval"},
        "blocks": {"client"},
        "exports": set(),
    },
    "loki.process": {
        "args": {"forward_to"},
        "blocks": {
            "stage.json",
            "stage.labels",
            "stage.structured_metadata",
            "stage.timestamp",
            "stage.drop",
            "stage.regex",
        },
        "exports": {"receiver"},
    },
    "loki.write": {"args": {"external_labels"}, "blocks": {"endpoint"}, "exports": {"receiver"}},
}
ALLOY_BLOCKS: dict[str, set[str]] = {
    "rule": {
        "source_labels",
        "separator",
        "regex",
        "modulus",
        "target_label",
        "replacement",
        "action",
    },
    "stage.json": {"expressions", "source", "drop_malformed"},
    "stage.labels": {"values"},
    "stage.structured_metadata": {"values"},
    "stage.timestamp": {"source", "format", "fallback_formats", "location", "action_on_failure"},
    "endpoint": {"url", "name", "headers", "batch_wait", "batch_size", "bearer_token", "tenant_id"},
}

TOKEN = re.compile(
    r"""(?P<space>\s+)|(?P<comment>//[^\n]*|/\*.*?\*/)|(?P<string>"(?:\\.|[^"\\\n])*")
    |(?P<raw>`[^`]*`)|(?P<number>\d+(?:\.\d+)?)|(?P<ident>[A-Za-z_]\w*)
    |(?P<punct>[{}\[\]().,=])""",
    re.S | re.X,
)


@dataclass
class Block:
    name: str
    label: str | None
    attributes: dict[str, Any] = field(default_factory=dict)
    blocks: list[Block] = field(default_factory=list)


class AlloyParser:
    """Alloy's syntax, the part these configs use (no operators)."""

    def __init__(self, text: str) -> None:
        self.tokens: list[tuple[str, str]] = []
        position = 0
        while position < len(text):
            match = TOKEN.match(text, position)
            if match is None:
                raise SyntaxError(f"unexpected {text[position : position + 20]!r}")
            position = match.end()
            kind = match.lastgroup or ""
            if kind not in {"space", "comment"}:
                self.tokens.append((kind, match.group()))
        self.at = 0
        self.references: list[str] = []

    def peek(self, offset: int = 0) -> tuple[str, str]:
        index = self.at + offset
        return self.tokens[index] if index < len(self.tokens) else ("end", "")

    def take(self, value: str | None = None, kind: str | None = None) -> str:
        found_kind, found = self.peek()
        if (value is not None and found != value) or (kind is not None and found_kind != kind):
            raise SyntaxError(f"expected {value or kind}, found {found!r} at token {self.at}")
        self.at += 1
        return found

    def body(self, closing: str | None) -> Block:
        block = Block("", None)
        while self.peek()[1] != (closing or "") and self.peek()[0] != "end":
            name = self.take(kind="ident")
            if self.peek()[1] == "=":
                self.take("=")
                block.attributes[name] = self.expression()
                continue
            while self.peek()[1] == ".":
                self.take(".")
                name += "." + self.take(kind="ident")
            label = self.take(kind="string")[1:-1] if self.peek()[0] == "string" else None
            self.take("{")
            inner = self.body("}")
            self.take("}")
            block.blocks.append(Block(name, label, inner.attributes, inner.blocks))
        return block

    def expression(self) -> Any:
        kind, value = self.peek()
        if kind in {"string", "raw"}:
            self.at += 1
            return value[1:-1]
        if kind == "number":
            self.at += 1
            return float(value)
        if value == "[":
            self.take("[")
            items = []
            while self.peek()[1] != "]":
                items.append(self.expression())
                if self.peek()[1] != "]":
                    self.take(",")
            self.take("]")
            return items
        if value == "{":
            self.take("{")
            entries = {}
            while self.peek()[1] != "}":
                key = self.take()
                self.take("=")
                entries[key.strip('"')] = self.expression()
                if self.peek()[1] != "}":
                    self.take(",")
            self.take("}")
            return entries
        if kind == "ident":
            if value in {"true", "false", "null"}:
                self.at += 1
                return {"true": True, "false": False, "null": None}[value]
            reference = self.take(kind="ident")
            while self.peek()[1] == ".":
                self.take(".")
                reference += "." + self.take(kind="ident")
            if self.peek()[1] == "(":  # a standard library call, e.g. sys.env("X")
                self.take("(")
                while self.peek()[1] != ")":
                    self.expression()
                    if self.peek()[1] != ")":
                        self.take(",")
                self.take(")")
                return f"call:{reference}"
            self.references.append(reference)
            return f"ref:{reference}"
        raise SyntaxError(f"unexpected {value!r}")


@pytest.fixture(scope="module")
def alloy() -> tuple[Block, list[str]]:
    parser = AlloyParser(ALLOY.read_text())
    root = parser.body(None)
    return root, parser.references


def test_the_alloy_parser_refuses_what_alloy_would() -> None:
    for broken in ('loki.write "x" {', "a = [1, 2", 'loki.write "x" { url = }', "a = 'single'"):
        with pytest.raises(SyntaxError):
            AlloyParser(broken).body(None)


def test_alloy_components_and_arguments_are_documented_ones(alloy: tuple[Block, list[str]]) -> None:
    root, _ = alloy
    assert not root.attributes
    names = set()
    for component in root.blocks:
        spec = ALLOY_COMPONENTS.get(component.name)
        assert spec, f"unknown component {component.name}"
        assert component.label, f"{component.name} needs a label"
        assert set(component.attributes) <= spec["args"], component.name
        for inner in component.blocks:
            assert inner.name in spec["blocks"], (component.name, inner.name)
            assert set(inner.attributes) <= ALLOY_BLOCKS[inner.name], inner.name
        names.add(f"{component.name}.{component.label}")
    assert len(names) == len(root.blocks), "two components with the same name and label"


def test_every_alloy_reference_points_at_a_defined_export(alloy: tuple[Block, list[str]]) -> None:
    root, references = alloy
    defined = {f"{c.name}.{c.label}": c.name for c in root.blocks}
    assert references
    for reference in references:
        component, _, export = reference.rpartition(".")
        assert component in defined, reference
        assert export in ALLOY_COMPONENTS[defined[component]]["exports"], reference


def test_alloy_reads_docker_and_writes_to_compose_s_loki(alloy: tuple[Block, list[str]]) -> None:
    root, _ = alloy
    by_name = {c.name: c for c in root.blocks}
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    socket = by_name["loki.source.docker"].attributes["host"].removeprefix("unix://")
    assert any(v.split(":")[1] == socket for v in compose["alloy"]["volumes"])
    url = by_name["loki.write"].blocks[0].attributes["url"]
    port = yaml.safe_load(LOKI.read_text())["server"]["http_listen_port"]
    assert url == f"http://loki:{port}/loki/api/v1/push"
    assert "/etc/alloy/config.alloy" in compose["alloy"]["command"]


# Loki 3's configuration reference, the part this file uses.
LOKI_KEYS: dict[str, Any] = {
    "auth_enabled": None,
    "server": {"http_listen_port": None, "grpc_listen_port": None, "log_level": None},
    "common": {
        "instance_addr": None,
        "path_prefix": None,
        "replication_factor": None,
        "ring": {"kvstore": {"store": None}},
        "storage": {"filesystem": {"chunks_directory": None, "rules_directory": None}},
    },
    "schema_config": {
        "configs": [
            {
                "from": None,
                "store": None,
                "object_store": None,
                "schema": None,
                "index": {"prefix": None, "period": None},
            }
        ]
    },
    "limits_config": {
        "retention_period": None,
        "allow_structured_metadata": None,
        "reject_old_samples": None,
        "reject_old_samples_max_age": None,
    },
    "compactor": {
        "working_directory": None,
        "retention_enabled": None,
        "delete_request_store": None,
    },
    "analytics": {"reporting_enabled": None},
}


def unknown_keys(value: Any, known: Any, path: str = "") -> list[str]:
    if isinstance(value, dict):
        if not isinstance(known, dict):
            return [path]
        found = []
        for key, item in value.items():
            if key not in known:
                found.append(f"{path}.{key}")
            else:
                found += unknown_keys(item, known[key], f"{path}.{key}")
        return found
    if isinstance(value, list) and isinstance(known, list):
        return [k for item in value for k in unknown_keys(item, known[0], f"{path}[]")]
    return []


def test_loki_keys_are_in_loki_s_reference_and_agree_with_each_other() -> None:
    config = yaml.safe_load(LOKI.read_text())
    assert unknown_keys(config, LOKI_KEYS) == []
    schema = config["schema_config"]["configs"][-1]
    assert (schema["store"], schema["schema"]) == ("tsdb", "v13")
    # Alloy sends request ids as structured metadata: Loki must accept it (TSDB, v13).
    assert config["limits_config"]["allow_structured_metadata"] is True
    compactor = config["compactor"]
    if compactor["retention_enabled"]:
        assert compactor["delete_request_store"] == schema["object_store"]
    mount = next(
        v.split(":")[1]
        for v in yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]["loki"][
            "volumes"
        ]
        if v.startswith("loki-data:")
    )
    storage = config["common"]["storage"]["filesystem"]
    for path in (
        config["common"]["path_prefix"],
        *storage.values(),
        compactor["working_directory"],
    ):
        assert path.startswith(mount), path
