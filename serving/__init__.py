"""Persona's serving layer: the app config (``serve:``) and the FastAPI device + cloud apps (the CLI: :mod:`cli`)."""
