"""A fast, faithful test double of the vLLM OpenAI-compatible server (``switchboard sim-vllm``).

It is NOT vLLM: it generates deterministic toy text, says so in ``/version`` and its logs, and
adds simulator-only knobs. The HTTP contract it follows is ``shared/vllm-contract.md``.

vLLM endpoints: ``/health``, ``/ping``, ``/version``, ``/load``, ``/metrics``, ``/tokenize``,
``/detokenize``, ``/v1/models``, ``/v1/chat/completions`` (streaming and not, ``n`` >= 1).

Simulator-only, per request (chat only):

- ``X-Sim-Fault``: ``none|500|empty500|503|hang|cut:N|drop:N|stall:N`` (see ``faults.py``);
- ``X-Sim-TTFT-Ms``, ``X-Sim-ITL-Ms``, ``X-Sim-Tokens``: override the timing and reply length.

Simulator-only endpoints (uncounted; behind ``--api-key`` when set): ``GET /sim/stats``,
``POST /sim/health`` ``{"healthy": bool}``, ``POST /sim/reset`` (see ``control.py``).

Layout: ``options`` (knobs) → ``app`` (routing, auth) → ``completions`` (chat I/O) over
``chat`` (validation, reply plan), ``text`` (tokenizer, reply text), ``chunks`` (SSE bytes),
``overrides`` (``X-Sim-*`` headers), ``faults``, ``scheduler`` (``--max-num-seqs`` queue),
``disconnect``, ``metrics``, ``state``.
"""

SIMULATOR_NAME = "switchboard-sim-vllm"
VLLM_VERSION = "0.20.2"
