"""Files in and out: checkpoints (:mod:`~pruners.io.checkpoint`), model-file checks, safe output directories
and text input files."""
