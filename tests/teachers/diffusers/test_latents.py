"""VAE latent encode/decode with scaling and shift factors."""

from __future__ import annotations

import torch

from fewstep.teachers.diffusers.latents import LatentCodec, decode, encode, vae_factors


@torch.no_grad()
def test_encode_decode_formulas(tiny_pipe):
    vae = tiny_pipe.vae
    scale, shift = vae_factors(vae)
    assert (scale, shift) == (0.3611, 0.1159)
    img = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    z = encode(vae, img)
    assert z.shape == (2, 16, 16, 16)
    mode = vae.encode(img).latent_dist.mode()
    torch.testing.assert_close(z, (mode - shift) * scale)
    # sampling is reproducible with a generator and differs from the mode
    z1 = encode(vae, img, sample=True, generator=torch.Generator().manual_seed(1))
    z2 = encode(vae, img, sample=True, generator=torch.Generator().manual_seed(1))
    assert torch.equal(z1, z2) and not torch.equal(z1, z)
    # decode is ZImagePipeline's formula: vae.decode(latents / scaling + shift)
    torch.testing.assert_close(decode(vae, z), vae.decode(z / 0.3611 + 0.1159).sample)
    codec = LatentCodec(tiny_pipe)
    assert codec.spatial_factor == 2 and codec.latent_channels == 16
    torch.testing.assert_close(codec.decode(codec.encode(img)), decode(vae, z))
