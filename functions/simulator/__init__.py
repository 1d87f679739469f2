"""A fast, faithful test double of the vLLM OpenAI-compatible server (``switchboard sim-vllm``).

It is NOT vLLM: it generates deterministic toy text, says so in ``/version`` and its logs, and
adds simulator-only knobs. The HTTP contract it follows is ``shared/vllm-contract.md``; what
it adds beyond it is ``docs/simulator.md``.

vLLM endpoints: ``/health``, ``/ping``, ``/version``, ``/load``, ``/metrics``, ``/tokenize``,
``/detokenize``, ``/v1/models``; a generating model (``--runner generate``, the default)
serves ``/v1/chat/completions`` and ``/v1/completions`` (streaming and not, ``n`` >= 1,
logprobs, structured outputs, tool calls); an embedding model (``--runner pooling``)
serves ``/v1/embeddings`` instead.

Simulator-only, per generating request:

- ``X-Sim-Fault``: ``none|500|empty500|503|hang|cut:N|drop:N|stall:N`` (see ``faults.py``);
- ``X-Sim-TTFT-Ms``, ``X-Sim-ITL-Ms``, ``X-Sim-Tokens``: override the timing and reply length.

Simulator-only endpoints (uncounted; behind ``--api-key`` when set): ``GET /sim/stats``,
``POST /sim/health`` ``{"healthy": bool}``, ``POST /sim/reset`` (see ``control.py``).

Layout: ``options`` (knobs) → ``app`` (routing, auth) → ``generation`` (the generating
endpoints' engine: faults, queue, timing, bytes out) under ``chat_endpoint`` and
``text_completion_endpoint`` (each endpoint's wire format) over ``chat`` and
``text_completion`` (validation, reply plan), sharing ``planning`` (model, limits, a choice's
tokens), ``structured`` (JSON from a schema), ``logprobs``, ``text`` (tokenizer, reply text)
and ``chunks`` (chat SSE bytes); ``embeddings`` (the embedding model); ``overrides``
(``X-Sim-*`` headers), ``faults``, ``scheduler`` (``--max-num-seqs`` queue), ``disconnect``,
``metrics``, ``state``.
"""

SIMULATOR_NAME = "switchboard-sim-vllm"
VLLM_VERSION = "0.20.2"
