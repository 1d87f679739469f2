"""OpenAI's Responses API on the door: ``/v1/responses`` over the conversation store."""
