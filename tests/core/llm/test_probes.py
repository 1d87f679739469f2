"""Reading vLLM's ``/metrics`` gauges (both KV-cache names, several engines) and ``/version``."""

from __future__ import annotations

from functions.core.llm.probes import Gauges, is_simulator, parse_gauges

TWO_ENGINES = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_running{engine="1",model_name="m"} 2.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 7.0
vllm:num_requests_waiting{engine="1",model_name="m"} 0.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.75
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="m"} 123.0
"""

OLD_NAME = """\
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="m"} 0.5
"""


def test_gauges_summed_over_engines_and_fullest_kv_cache() -> None:
    assert parse_gauges(TWO_ENGINES) == Gauges(running=5.0, waiting=7.0, kv_cache_usage=0.75)


def test_the_pre_v0_12_kv_cache_name() -> None:
    assert parse_gauges(OLD_NAME) == Gauges(kv_cache_usage=0.5)


def test_stats_logging_disabled_means_no_gauges() -> None:
    assert parse_gauges("# nothing from vllm here\nhttp_requests_total 3.0\n") == Gauges()


def test_simulator_is_told_apart_from_vllm() -> None:
    assert is_simulator({"version": "0.20.2", "simulator": "switchboard-sim-vllm"})
    assert not is_simulator({"version": "0.20.2"})
    assert not is_simulator(None)
