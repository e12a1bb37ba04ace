"""Training package (Doc-to-LoRA / Text-to-LoRA)."""
