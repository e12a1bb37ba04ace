"""Hyper package (Doc-to-LoRA / Text-to-LoRA)."""
