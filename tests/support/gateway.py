"""The Switchboard gateway (``switchboard serve``) as a subprocess for end-to-end tests."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tests.support.process import REPO_ROOT, ServiceProcess

if TYPE_CHECKING:
    from pathlib import Path


class GatewayProcess(ServiceProcess):
    health_path = "/healthz"

    def __init__(
        self,
        database_url: str,
        llm_urls: list[str],
        *,
        function: str | None = None,
        workers: int = 1,
        env: dict[str, str] | None = None,
        code: Path = REPO_ROOT,
        cli: str = "functions.cli",
    ) -> None:
        args = ["serve", "--workers", str(workers)]
        args += ["--function", function] if function else []
        super().__init__(cli, tuple(args), env=env, code=code)
        self.env = {
            "SWITCHBOARD_DATABASE_URL": database_url,
            "SWITCHBOARD_LLM_URLS": ",".join(llm_urls),
            "SWITCHBOARD_LOG_FORMAT": "json",
            "SWITCHBOARD_LLM_CONNECT_TIMEOUT_S": "1",
            **(env or {}),
        }

    def command(self) -> list[str]:
        return [*super().command(), "--port", str(self.port)]
