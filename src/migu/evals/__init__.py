"""Evaluations beyond the continual-learning task suite (general-ability / forgetting probes)."""
