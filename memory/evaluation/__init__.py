"""Evaluation: the QA comparison of memory arms (:mod:`.qa`), online A/B experiments (:mod:`.experiments`),
answer metrics and bootstrap intervals (:mod:`.metrics`), and the built-in suites (:mod:`.suites`)."""
