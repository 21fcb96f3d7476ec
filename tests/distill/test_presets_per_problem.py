"""Per-problem presets: they validate, and differ from the recipe's official defaults only in
the values their sweep chose (benchmarks/results/presets_digits_narrow.md)."""

from fewstep.distill.config import DistillConfig
from fewstep.presets import PRESETS, preset_path
from fewstep.utils.config_files import load_yaml, validate


def test_every_preset_validates():
    for p in sorted(PRESETS.glob("*.yaml")):
        data = load_yaml(p)
        if "method" in data:
            validate(DistillConfig, data)


def test_sid_and_ladd_digits_presets_change_only_their_swept_values():
    sid = validate(DistillConfig, load_yaml(preset_path("sid_digits_narrow")))
    default = validate(DistillConfig, {"method": "sid"})
    assert sid.sid.model_dump() == {**default.sid.model_dump(), "fake_level": "teacher"}
    ladd = validate(DistillConfig, load_yaml(preset_path("ladd_digits_narrow")))
    assert (ladd.ladd.sigma_mean, ladd.train.aux_ratio, ladd.train.lr) == (-1.0, 3, 3e-5)
    assert ladd.gan.loss == "hinge" and ladd.student.parameterization == "shared"
