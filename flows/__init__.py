"""Prefect flows: they compose the stages of tasks/ and the training of lm/."""
