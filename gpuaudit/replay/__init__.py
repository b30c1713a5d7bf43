"""replay: send a recorded workload to an OpenAI-compatible endpoint and measure it."""
