"""A real Prometheus Pushgateway for the tests that check what flows push, and readers of it.

Shared by the operations tests (the Compose stack's flows) and the flow tests (maintenance
pushing its counts), so it lives here rather than in either's conftest.
"""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.ops.tools import debian_tool
from tests.support.process import HOST, ServiceProcess

FlowSamples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class PushgatewayProcess(ServiceProcess):
    health_path = "/-/ready"

    def __init__(self) -> None:
        super().__init__("pushgateway", ())
        self.binary = debian_tool("prometheus-pushgateway", "prometheus-pushgateway")

    def command(self) -> list[str]:
        return [self.binary, f"--web.listen-address={HOST}:{self.port}"]


def pushed(pushgateway: PushgatewayProcess) -> FlowSamples:
    """Every ``switchboard_flow_*`` sample the Pushgateway serves, by name and labels."""
    text = httpx.get(f"{pushgateway.root_url}/metrics", timeout=5).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("switchboard_flow_")
    }


def value(samples: FlowSamples, name: str, **labels: str) -> float:
    for (sample, found), number in samples.items():
        if sample == name and all(dict(found).get(k) == v for k, v in labels.items()):
            return number
    raise KeyError((name, labels))
