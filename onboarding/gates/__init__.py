"""Gates: hospital IT's approvals of exact artifacts, which the engine checks before a gated step starts."""
