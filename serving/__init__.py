"""Persona's serving layer: CLI, config composition, pipelines and the FastAPI apps."""
