"""The offline model configs shipped per family (``fewstep/assets/configs``) and the family
presets: every shipped denoiser config builds (on meta) to the parameter count its publisher
states, and ``fewstep plan --preset X`` runs offline for every family preset."""

from __future__ import annotations

import json

import diffusers
import pytest
import torch
from typer.testing import CliRunner

from fewstep.app.cli import app
from fewstep.app.plan_models import SHIPPED_CONFIGS

#: folder -> (denoiser subfolder, size its publisher states on the model card / release)
PUBLISHED = {
    "z_image_turbo": ("transformer", 6.0e9),        # "6B"
    "flux1_dev": ("transformer", 12.0e9),           # "12 billion parameter"
    "flux1_schnell": ("transformer", 12.0e9),
    "sd3_5_large": ("transformer", 8.1e9),          # "8.1 billion parameters"
    "sd3_5_medium": ("transformer", 2.5e9),         # "2.5 billion parameters" (see below)
    "sdxl_base": ("unet", 2.6e9),                   # SDXL report: "2.6B" UNet
    "sd15": ("unet", 0.86e9),                       # "860M UNet"
    "pixart_sigma_1024": ("transformer", 0.6e9),    # "0.6B"
    "sana_1600m_1024": ("transformer", 1.6e9),      # "1.6B"
    "qwen_image": ("transformer", 20e9),            # "20B MMDiT"
}

FAMILY_PRESETS = {  # preset -> (teacher size range, hub id)
    "flux1_dev_2step": ((11.8e9, 12.0e9), "black-forest-labs/FLUX.1-dev"),
    "flux1_schnell_2step": ((11.8e9, 12.0e9), "black-forest-labs/FLUX.1-schnell"),
    "sd15_2step": ((0.85e9, 0.87e9), "stable-diffusion-v1-5/stable-diffusion-v1-5"),
    "pixart_sigma_2step": ((0.60e9, 0.62e9), "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS"),
    "sd3_5_large_2step": ((8.0e9, 8.1e9), "stabilityai/stable-diffusion-3.5-large"),
    "sana_2step": ((1.55e9, 1.65e9), "Efficient-Large-Model/Sana_1600M_1024px_diffusers"),
}


def test_index_names_every_shipped_folder() -> None:
    index = json.loads((SHIPPED_CONFIGS / "index.json").read_text())
    folders = {v for k, v in index.items() if not k.startswith("_")}
    assert folders == set(PUBLISHED)
    for f in folders:
        assert (SHIPPED_CONFIGS / f / "model_index.json").is_file()
        assert not list((SHIPPED_CONFIGS / f).rglob("*.safetensors"))  # configs only


@pytest.mark.parametrize("folder", sorted(PUBLISHED))
def test_shipped_denoiser_config_has_the_published_size(folder: str) -> None:
    sub, published = PUBLISHED[folder]
    cfg = json.loads((SHIPPED_CONFIGS / folder / sub / "config.json").read_text())
    cls = getattr(diffusers, cfg["_class_name"])
    with torch.device("meta"):
        net = cls.from_config(cfg)
    n = sum(p.numel() for p in net.parameters())
    if folder == "sd3_5_medium":  # diffusers keeps the 384x384 position table as a buffer
        n += sum(b.numel() for name, b in net.named_buffers() if "pos_embed" in name)
    assert abs(n / published - 1) < 0.03, (folder, n)


@pytest.mark.parametrize("preset", sorted(FAMILY_PRESETS))
def test_family_preset_plans_offline(preset: str, monkeypatch: pytest.MonkeyPatch) -> None:
    (lo, hi), hub_id = FAMILY_PRESETS[preset]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    res = CliRunner().invoke(app, ["plan", "--preset", preset, "--gpus", "8", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert json.loads(out["teacher"])["pretrained"] == hub_id
    counts = {m["name"]: m for m in out["models"]}
    assert lo < counts["teacher"]["total"] < hi
    assert 0 < counts["student"]["trainable"] < 0.1 * counts["teacher"]["total"]  # LoRA
    assert counts["vae"]["total"] > 0
    assert out["per_gpu_batch"] == 1 and out["global_batch"] == 8
    # a transformer teacher gets the token formula; a UNet (SD 1.5) the coarse estimate
    assert out["activation_basis"]["basis"].startswith(
        "coarse" if preset == "sd15_2step" else "transformer formula")
    mine = [r for r in out["rows"] if r["configured"]]
    assert len(mine) == 1 and mine[0]["lora"] and mine[0]["activations"] > 0
    full = [r for r in out["rows"] if r["lora"] and not r["fsdp"] and not r["grad_ckpt"]]
    assert full and full[0]["activations"] > mine[0]["activations"]  # checkpointing saves
