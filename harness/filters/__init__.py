"""Filters over synthetic Q&A items: near-duplicate removal (within the set and against the seeds) and
decontamination against every eval split of the recipe's evaluation suite."""
