"""Evaluation: perplexity, zero-shot multiple choice, generation speed and memory."""

from .multiple_choice import Choice, check_limit, read_openbookqa, read_piqa, zero_shot
from .perplexity import check_text_file, documents, perplexity
from .speed import generation_speed, speed_in_own_process

__all__ = ["Choice", "check_limit", "check_text_file", "documents", "generation_speed", "perplexity", "read_openbookqa", "read_piqa", "speed_in_own_process", "zero_shot"]
