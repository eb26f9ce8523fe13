"""Experiments over finished runs: schedule comparisons, forgetting metrics, reports, fine-tuning."""
