"""Cloud side of Persona: LLM backbones, multi-modal context, the adapter and the prototype bank."""
