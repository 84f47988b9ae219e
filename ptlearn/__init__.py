"""ptlearn: prompt learning (prompt tuning, p-tuning) for frozen GPT models in JAX/Flax."""

__version__ = "0.1.0"
