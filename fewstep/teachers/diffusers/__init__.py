"""Teachers read from diffusers pipelines: the adapter, the per-family entries, the
denoiser wrappers (flow and VP), latents and the prompt-embedding cache."""
