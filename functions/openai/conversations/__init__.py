"""OpenAI's Conversations API over the conversation store."""
