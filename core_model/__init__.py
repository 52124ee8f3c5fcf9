"""core_model."""
