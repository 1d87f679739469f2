"""The OpenAI door: OpenAI's API over Switchboard's send path (see docs/openai.md)."""
