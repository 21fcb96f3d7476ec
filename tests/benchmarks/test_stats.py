"""benchmarks.stats.aggregate: mean and standard deviation over seeds, labels skipped."""

import math

from benchmarks.stats import aggregate


def test_aggregate_skips_labels_and_nan():
    runs = [{"fid": 1.0, "swd": math.nan, "feature_space": "pixels"},
            {"fid": 3.0, "swd": 2.0, "feature_space": "pixels"}]
    out = aggregate(runs)
    assert set(out) == {"fid", "swd"}
    assert out["fid"] == (2.0, math.sqrt(2.0))
    assert out["swd"] == (2.0, 0.0)
