"""Stage 1 dual towers, stage 2 query-tower distillation, evaluation (training issue; not built yet)."""
