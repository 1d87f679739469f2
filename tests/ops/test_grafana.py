"""Grafana: the dashboards are the generator's output, every field is one Grafana's schema
knows (read back through grafana-foundation-sdk's models, which keep only known fields),
panels are laid out and wired to the provisioned datasources, and the Loki queries select
only labels Alloy sets. (No Grafana runs here: that the server loads them is not proven.)"""

from __future__ import annotations

import copy
import json
import re
import runpy
from pathlib import Path
from typing import Any

import pytest
import yaml
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import Dashboard

from functions.serve import FUNCTIONS
from tests.ops.tools import MONITORING, REPO

GRAFANA = MONITORING / "grafana"
BOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))


def read_back(board: dict[str, Any]) -> dict[str, Any]:
    """``board`` decoded by the SDK's models and encoded again."""
    again: dict[str, Any] = json.loads(JSONEncoder().encode(Dashboard.from_json(board)))
    return again


def test_the_committed_dashboards_are_the_generator_s_output() -> None:
    generated = runpy.run_path(str(GRAFANA / "generate.py"))["render"]()
    assert {f"{name}.json" for name in generated} == {path.name for path in BOARDS}
    for name, text in generated.items():
        assert (GRAFANA / "dashboards" / f"{name}.json").read_text() == text, (
            f"{name}.json is stale: run `python monitoring/grafana/generate.py`"
        )


@pytest.mark.parametrize("path", BOARDS, ids=[p.stem for p in BOARDS])
def test_every_field_is_one_grafana_knows(path: Path) -> None:
    board = json.loads(path.read_text())
    assert read_back(board) == board
    # The check has teeth: a field Grafana does not know does not survive it.
    tampered = copy.deepcopy(board)
    tampered["panels"][1]["colour"] = "red"
    assert read_back(tampered) != tampered


def datasources() -> dict[str, str]:
    provisioned = yaml.safe_load((GRAFANA / "provisioning/datasources/datasources.yml").read_text())
    return {source["uid"]: source["type"] for source in provisioned["datasources"]}


@pytest.mark.parametrize("path", BOARDS, ids=[p.stem for p in BOARDS])
def test_panels_are_laid_out_and_wired_to_provisioned_datasources(path: Path) -> None:
    board = json.loads(path.read_text())
    assert board["uid"].startswith("switchboard-")
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    sources = datasources()
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        source = panel["datasource"]
        assert sources.get(source["uid"]) == source["type"], panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert refs, panel["title"]
        assert len(refs) == len(set(refs)), panel["title"]
        assert all(refs), panel["title"]
        assert all(target["expr"].strip() for target in panel["targets"]), panel["title"]


def test_the_loki_queries_select_labels_alloy_sets() -> None:
    alloy = (MONITORING / "alloy" / "config.alloy").read_text()
    labels = set(re.findall(r'target_label\s*=\s*"(\w+)"', alloy))
    labels |= set(
        re.findall(r"(\w+)\s*=\s*\"\",?", alloy.split("stage.labels", 1)[1].split("}")[0])
    )
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = set(compose["services"]) | {"upstreams"}
    queries = 0
    selected: list[set[str]] = []
    for path in BOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            if panel.get("datasource", {}).get("uid") != "loki":
                continue
            for target in panel["targets"]:
                selector = re.match(r"\{([^}]*)\}", target["expr"])
                assert selector, target["expr"]
                for label, value in re.findall(r'(\w+)\s*=~?\s*"([^"]*)"', selector[1]):
                    assert label in labels, (label, target["expr"])
                    if label == "service":
                        assert set(value.split("|")) <= services, value
                        selected.append(set(value.split("|")))
                queries += 1
    assert queries >= 3
    # The functions' logs panels read every function's service, the OpenAI door's too.
    assert set(FUNCTIONS) in selected, selected


def test_provisioning_points_at_what_compose_mounts() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    grafana = compose["services"]["grafana"]
    mounts = dict(volume.split(":")[:2][::-1] for volume in grafana["volumes"])
    provider = yaml.safe_load((GRAFANA / "provisioning/dashboards/switchboard.yml").read_text())
    dashboards_dir = provider["providers"][0]["options"]["path"]
    assert mounts[dashboards_dir] == "./monitoring/grafana/dashboards"
    assert mounts["/etc/grafana/provisioning"] == "./monitoring/grafana/provisioning"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (GRAFANA / "dashboards" / Path(home).name).exists()
    assert home.startswith(dashboards_dir)
    urls = yaml.safe_load((GRAFANA / "provisioning/datasources/datasources.yml").read_text())
    for source in urls["datasources"]:
        host = source["url"].split("//")[1].split(":")[0]
        assert host in compose["services"], source["url"]
