"""ComfyUI / kohya-format per-step LoRA files, loaded by diffusers' own loaders for
non-diffusers LoRA formats (``<Pipeline>.lora_state_dict`` + ``load_lora_into_*``: the
converters diffusers users call), give fewstep's merged weights: max abs diff per module."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from comfy_helpers import ALPHA, NETWORKS, RANK, fewstep_merged, trained_lora
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import save_file
from torch import nn

from fewstep.export.comfyui_keys import (
    COMFY_FORMATS,
    comfy_lora_tensors,
    flux_widths_of,
    fuse,
    key_format_for,
    lora_delta,
)

#: (case, key format): every format of every family
#: (Flux's kohya single blocks: diffusers' converter fixes Flux.1's widths, see the test below)
CASES = [("sd15", "kohya"), ("sdxl", "kohya"), ("flux", "transformer"),
         ("flux_double_all", "kohya"), ("zimage", "diffusion_model"), ("zimage", "transformer"),
         ("qwenimage", "diffusion_model"), ("qwenimage", "kohya"), ("sd3", "transformer"),
         ("pixart", "transformer")]


def _load_with_diffusers(pipeline: str, net: nn.Module, path: Path, name: str) -> None:
    import diffusers

    cls = getattr(diffusers, pipeline)
    if pipeline == "PixArtSigmaPipeline":  # no LoRA loader mixin: peft reads diffusers' format
        from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
        from safetensors.torch import load_file

        sd = {k.removeprefix("transformer."): v for k, v in load_file(str(path)).items()}
        mods = sorted({k.rsplit(".lora_", 1)[0] for k in sd})
        inject_adapter_in_model(LoraConfig(r=RANK, lora_alpha=RANK, target_modules=mods), net,
                                adapter_name=name)
        res = set_peft_model_state_dict(net, sd, adapter_name=name)
        assert not res.unexpected_keys
    elif pipeline in ("StableDiffusionPipeline", "StableDiffusionXLPipeline"):
        kw = {"unet_config": net.config} if "XL" in pipeline else {}
        sd, alphas = cls.lora_state_dict(str(path), **kw)
        cls.load_lora_into_unet(sd, alphas, net, adapter_name=name)
    elif pipeline == "FluxPipeline":
        sd, alphas = cls.lora_state_dict(str(path), return_alphas=True)
        cls.load_lora_into_transformer(sd, network_alphas=alphas, transformer=net,
                                       adapter_name=name)
    else:
        cls.load_lora_into_transformer(cls.lora_state_dict(str(path)), transformer=net,
                                       adapter_name=name)


def _loaded_merged(net: nn.Module, adapter: str) -> tuple[dict, dict]:
    """``(base + delta per peft layer, max |delta| per layer)`` of what diffusers loaded."""
    merged, size = {}, {}
    for name, mod in net.named_modules():
        if isinstance(mod, BaseTunerLayer) and adapter in getattr(mod, "lora_A", {}):
            d = mod.get_delta_weight(adapter).detach()
            merged[name] = mod.get_base_layer().weight.detach() + d
            size[name] = float(d.abs().max())
    return merged, size


@pytest.mark.parametrize(("case", "fmt"), CASES)
def test_diffusers_loads_the_format_with_fewsteps_weights(tmp_path, case, fmt):
    build, targets, pipeline = NETWORKS[case]
    net = build()
    clean = copy.deepcopy(net)
    lora = trained_lora(net, targets)
    cls = type(clean).__name__
    widths = flux_widths_of(clean) if cls == "FluxTransformer2DModel" else None
    for k in range(2):
        tensors = comfy_lora_tensors(cls, lora.adapter_state_dict(k), ALPHA, fmt, widths)
        path = tmp_path / f"{case}_{fmt}_step{k}.safetensors"
        save_file(tensors, str(path))
        fresh = copy.deepcopy(clean)
        _load_with_diffusers(pipeline, fresh, path, f"step{k}")
        want = fewstep_merged(lora, k)
        got, delta = _loaded_merged(fresh, f"step{k}")
        assert set(want) <= set(got), f"not loaded: {sorted(set(want) - set(got))[:3]}"
        # a module diffusers gives a LoRA that fewstep has none on must change nothing
        assert all(delta[n] == 0.0 for n in set(got) - set(want))
        diff = max(float((want[n] - got[n]).abs().max()) for n in want)
        assert diff <= 1e-6, f"{case} {fmt} step {k}: max |W diff| {diff:.3g}"


def test_flux_single_blocks_at_real_width():
    """diffusers' kohya Flux converter fixes the single blocks' widths at Flux.1's (3072 /
    12288), so the fused ``linear1`` is checked at that size on tensors only."""
    from diffusers.loaders.lora_conversion_utils import _convert_kohya_flux_lora_to_diffusers

    h, mlp, r = 3072, 12288, 4
    g = torch.Generator().manual_seed(0)
    ad = {}
    for blk in ("transformer_blocks.0", "single_transformer_blocks.0"):
        for m in ("attn.to_q", "attn.to_k", "attn.to_v"):
            ad[f"{blk}.{m}.lora_A.weight"] = torch.randn(r, h, generator=g) * 0.1
            ad[f"{blk}.{m}.lora_B.weight"] = torch.randn(h, r, generator=g) * 0.1
    kohya = comfy_lora_tensors("FluxTransformer2DModel", ad, ALPHA, "kohya", (h, mlp))
    assert kohya["lora_unet_single_blocks_0_linear1.lora_up.weight"].shape == (3 * h + mlp, 3 * r)
    conv = _convert_kohya_flux_lora_to_diffusers(dict(kohya))
    want = lora_delta(ad, ALPHA)
    got = {}
    for key, a in conv.items():
        if key.endswith(".lora_A.weight"):
            mod = key.removeprefix("transformer.").removesuffix(".lora_A.weight")
            got[mod] = conv[key.replace("lora_A", "lora_B")].double() @ a.double()
    assert set(want) <= set(got)
    assert max(float((want[m] - got[m]).abs().max()) for m in want) < 1e-7
    # the converter also adds a LoRA on proj_mlp (part of linear1): its change must be zero
    assert all(float(got[m].abs().max()) == 0.0 for m in set(got) - set(want))


def test_fuse_is_block_diagonal():
    a1, b1 = torch.randn(2, 5), torch.randn(3, 2)
    a3, b3 = torch.randn(1, 5), torch.randn(4, 1)
    down, up = fuse([(a1, b1), None, (a3, b3)], [3, 2, 4])
    want = torch.cat([b1 @ a1, torch.zeros(2, 5), b3 @ a3])
    assert torch.allclose(up @ down, want)


def test_unsupported_networks_and_formats_are_named():
    with pytest.raises(ValueError, match=r"SanaTransformer2DModel.*diffusers export"):
        key_format_for("SanaTransformer2DModel")
    with pytest.raises(ValueError, match="'kohya' is not read for SD3Transformer2DModel"):
        key_format_for("SD3Transformer2DModel", "kohya")
    assert {f for fs in COMFY_FORMATS.values() for f in fs} == {"kohya", "diffusion_model",
                                                                 "transformer"}
    ad = {"x_embedder.lora_A.weight": torch.zeros(2, 4),
          "x_embedder.lora_B.weight": torch.zeros(4, 2)}
    with pytest.raises(ValueError, match="no kohya name for the LoRA on 'x_embedder'"):
        comfy_lora_tensors("FluxTransformer2DModel", ad, 2.0, "kohya", (4, 16))
