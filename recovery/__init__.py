"""Recovery: fine-tuning that turns a pruned model back into a usable one (LLM-Pruner's third stage).

One recipe (:func:`recover`, in :mod:`recovery.recipe`), one config (:class:`RecoverConfig`,
YAML-loadable), three methods: ``lora`` (peft LoRA on every linear projection, merged back),
``kd`` (distillation from the unpruned model) and ``full`` (all weights)::

    from pruners import load_pruned, load_tokenizer
    from recovery import RecoverConfig, recover

    model, record = load_pruned("out/stories260K-pruned")
    tokenizer = load_tokenizer("out/stories260K-pruned")
    config = RecoverConfig(data={"source": "../shared/data/tinystories-train/tinystories-train.cased.txt"})
    result = recover(model, tokenizer, config)      # the input model is not modified
    result.model                                    # a plain dense model of the pruned shape

On the command line: ``depprune recover --model PRUNED --data FILE --out DIR``, or ``depprune
prune ... --recover FILE`` to prune and recover in one run.
"""

from .config import DataConfig, DistillOptions, LoraOptions, RecoverConfig, RecoverRunConfig, TrainConfig
from .data import IGNORE, Example, TrainingData, alpaca_example, build_data, collate, pad_id, read_data, text_examples
from .lora import add_adapters, merge_adapters
from .losses import kd_loss, lm_loss
from .recipe import Batches, RecoverResult, lr_factor, recover, total_steps, validation_loss

__all__ = [
    "IGNORE", "Batches", "DataConfig", "DistillOptions", "Example", "LoraOptions", "RecoverConfig", "RecoverResult",
    "RecoverRunConfig", "TrainConfig", "TrainingData", "add_adapters", "alpaca_example", "build_data", "collate",
    "kd_loss", "lm_loss", "lr_factor", "merge_adapters", "pad_id", "read_data", "recover", "text_examples",
    "total_steps", "validation_loss",
]
