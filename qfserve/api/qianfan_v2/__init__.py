"""Qianfan V2: the OpenAI-shaped API at `/v2` (chat completions, models) with Qianfan's keys,
safety flags and error codes."""
