"""The maths: the flow path, the Denoiser interface, guidance, conditioning batches,
noise levels, samplers and noise correction. Depends on torch only."""
