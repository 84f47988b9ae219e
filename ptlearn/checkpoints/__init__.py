"""Importers of base-model checkpoints (GGUF, Hugging Face, NeMo) into ptlearn parameter trees."""
