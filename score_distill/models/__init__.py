"""Model backends: local transformers models and OpenAI-compatible endpoints."""
