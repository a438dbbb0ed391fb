"""The inference worker: base models and LoRA adapters behind a Unix socket (server.py), for the service's
OpenAI-compatible chat and completion routes. Its own process: the service never imports the ML stack."""
