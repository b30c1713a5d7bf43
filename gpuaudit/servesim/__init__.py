"""serve-sim: a simulated vLLM OpenAI-compatible server (see ``servesim.server``)."""
