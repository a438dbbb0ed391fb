"""Test infrastructure shared by the service, SDK and end-to-end tests (a real uvicorn server, HTTP helpers)."""
