"""The chart's checkers, in a virtual environment of their own, and what they are run for.

With any Python 3 (Makefile):

    python3 deploy/helm/tools.py path       where the tools' environment is (or will be)
    python3 deploy/helm/tools.py install    create it once (skipped when it exists)

With the tools' own Python (tests/deploy):

    .../bin/python deploy/helm/tools.py template VALUES...   every rendered object, as JSON
    .../bin/python deploy/helm/tools.py lint VALUES...       Helm's lint report, as JSON
    .../bin/python deploy/helm/tools.py package DIR          ``helm package`` into DIR: the
                                                            archive's files, as JSON
    .../bin/python deploy/helm/tools.py validate < OBJECTS   each object against Kubernetes'
                                                            schemas (JSON in, JSON out)
    .../bin/python deploy/helm/tools.py flow-run-job < TEMPLATE
                                                            the Job a Prefect Kubernetes
                                                            worker makes of a work pool's
                                                            base job template

The environment lives outside the repository, under ``~/.cache/switchboard`` (or
``$XDG_CACHE_HOME/switchboard``), named by a hash of the pins in ``tools.txt``: a new pin
makes a new environment, the same pins reuse it (CI on the same machine installs it once).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHART = HERE / "switchboard"
PINS = HERE / "tools.txt"
RELEASE = "switchboard"
NAMESPACE = "switchboard"
KUBERNETES = "1.33.0"


def pins() -> list[str]:
    """The requirement lines of ``tools.txt`` (comments do not make a new environment)."""
    lines = (line.split("#", 1)[0].strip() for line in PINS.read_text().splitlines())
    return [line for line in lines if line]


def tools_dir() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "switchboard"
    digest = hashlib.sha256("\n".join(pins()).encode()).hexdigest()[:12]
    return Path(cache) / f"chart-tools-{digest}"


def install() -> Path:
    target = tools_dir()
    if (target / ".installed").exists():
        return target
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(target)], check=True)  # noqa: S603
    pip = [str(target / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "-r", str(PINS)], check=True)  # noqa: S603
    (target / ".installed").touch()
    return target


def _values(paths: list[str]) -> dict[str, object]:
    """Values files merged as ``helm -f a -f b`` merges them (Helm's own coalescing of the
    result with the chart's values.yaml happens in the render)."""
    import helm_python as helm

    merged: dict[str, object] = {}
    for path in paths:
        merged = _merge(merged, helm.values_from_yaml(Path(path).read_text()))
    return merged


def _merge(base: dict[str, object], top: dict[str, object]) -> dict[str, object]:
    out = dict(base)
    for key, value in top.items():
        below = out.get(key)
        if isinstance(below, dict) and isinstance(value, dict):
            out[key] = _merge(below, value)
        else:
            out[key] = value
    return out


def template(paths: list[str]) -> list[dict[str, object]]:
    """``helm template`` of an install: every object of every template, hooks included."""
    import helm_python as helm
    import yaml

    chart = helm.Chart.load(CHART)
    manifests = chart.render(_values(paths), name=RELEASE, namespace=NAMESPACE, is_install=True)
    objects = []
    for source, text in sorted(manifests.items()):
        if not source.endswith((".yaml", ".yml")):
            continue  # NOTES.txt
        for document in yaml.safe_load_all(text):
            if document:
                document.setdefault("metadata", {}).setdefault("annotations", {})
                document["metadata"]["annotations"].setdefault("switchboard.dev/source", source)
                objects.append(document)
    return objects


def lint(paths: list[str]) -> dict[str, object]:
    import helm_python as helm

    return helm.lint(
        CHART, _values(paths), strict=True, namespace=NAMESPACE, kube_version=f"v{KUBERNETES}"
    )


def package(destination: str) -> dict[str, str]:
    """``helm package``: every file of the archive it writes, by path, as text."""
    import tarfile

    import helm_python as helm

    archive = helm.package(CHART, destination=destination)
    with tarfile.open(archive) as tar:
        return {
            member.name: tar.extractfile(member).read().decode()  # type: ignore[union-attr]
            for member in tar.getmembers()
            if member.isfile()
        }


def validate(objects: list[dict[str, object]]) -> list[dict[str, object]]:
    """Each object against Kubernetes' OpenAPI schema of its kind, strictly (an unknown
    field is an error, as ``kubectl apply --validate=strict`` makes it): its error, or None;
    ``schema: false`` for a kind Kubernetes has no schema for (a CRD's)."""
    import kubernetes_validate
    from kubernetes_validate.utils import SchemaNotFoundError

    results = []
    for each in objects:
        kind, name = each.get("kind"), each.get("metadata", {}).get("name")  # type: ignore[union-attr]
        try:
            kubernetes_validate.validate(each, KUBERNETES, strict=True)
        except SchemaNotFoundError:
            results.append({"kind": kind, "name": name, "schema": False, "error": None})
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(str(part) for part in exc.path)
            results.append(
                {"kind": kind, "name": name, "schema": True, "error": f"{where}: {exc.message}"}
            )
        else:
            results.append({"kind": kind, "name": name, "schema": True, "error": None})
    return results


def flow_run_job(base_job_template: dict[str, object]) -> dict[str, object]:
    """The Job prefect-kubernetes' worker submits for a flow run of a deployment on a pool
    with ``base_job_template`` and no overrides: its own validation and filling-in, no API."""
    import asyncio
    import uuid

    from prefect.client.schemas.objects import FlowRun
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    class NoAPI:
        def __getattr__(self, name: str) -> object:
            raise AssertionError(f"the template needs the Prefect API ({name})")

    async def build() -> dict[str, object]:
        configuration = await KubernetesWorkerJobConfiguration.from_template_and_values(
            base_job_template, values={}, client=NoAPI()
        )
        run = FlowRun(id=uuid.uuid4(), name="calm-otter", flow_id=uuid.uuid4())
        configuration.prepare_for_flow_run(flow_run=run)
        return configuration.job_manifest

    return asyncio.run(build())


def main(argv: list[str]) -> None:
    command, args = argv[0], argv[1:]
    if command == "path":
        print(tools_dir())
    elif command == "install":
        print(install())
    elif command == "template":
        json.dump(template(args), sys.stdout)
    elif command == "lint":
        json.dump(lint(args), sys.stdout)
    elif command == "package":
        json.dump(package(args[0]), sys.stdout)
    elif command == "validate":
        json.dump(validate(json.load(sys.stdin)), sys.stdout)
    elif command == "flow-run-job":
        json.dump(flow_run_job(json.load(sys.stdin)), sys.stdout)
    else:
        raise SystemExit(f"unknown command {command!r}: see this module's docstring")


if __name__ == "__main__":
    main(sys.argv[1:])
