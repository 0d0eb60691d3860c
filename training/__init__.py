"""Stage 1 dual towers, stage 2 query-tower distillation, evaluation (``python -m training``)."""
