"""Usage: traffic, tokens, latency and errors of the gateway's replies over time, per
configuration and model, aggregated from the usage ledger (``service.usage_report``)."""
