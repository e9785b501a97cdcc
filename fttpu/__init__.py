"""fttpu: one pure-functional fine-tuning step for JAX/Flax language models."""
