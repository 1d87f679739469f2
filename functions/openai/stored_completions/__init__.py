"""OpenAI's stored chat completions over the conversation store."""
