"""Test infrastructure shared by service, SDK and end-to-end tests (a real uvicorn server, HTTP helpers)."""
