"""Evaluation: perplexity, zero-shot multiple choice, generation speed and memory."""

from .multiple_choice import Choice, read_openbookqa, read_piqa, zero_shot
from .perplexity import documents, perplexity
from .speed import generation_speed

__all__ = ["Choice", "documents", "generation_speed", "perplexity", "read_openbookqa", "read_piqa", "zero_shot"]
