"""The K-step student: its step networks, per-step LoRA, the factory and the student file."""
