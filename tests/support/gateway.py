"""The Switchboard gateway (``switchboard serve``) as a subprocess for end-to-end tests."""

from __future__ import annotations

from tests.support.process import ServiceProcess


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
    ) -> None:
        args = ["serve", "--workers", str(workers)]
        args += ["--function", function] if function else []
        super().__init__("functions.cli", tuple(args), env=env)
        self.env = {
            "SWITCHBOARD_DATABASE_URL": database_url,
            "SWITCHBOARD_LLM_URLS": ",".join(llm_urls),
            "SWITCHBOARD_LOG_FORMAT": "json",
            "SWITCHBOARD_LLM_CONNECT_TIMEOUT_S": "1",
            **(env or {}),
        }

    def command(self) -> list[str]:
        return [*super().command(), "--port", str(self.port)]
