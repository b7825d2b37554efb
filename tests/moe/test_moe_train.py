"""`quark train` with configs/models/moe_tiny.gin trains: the loss falls and the MoE metrics are logged."""

import os

from conftest import REPO, read_metrics, run_quark, tiny_overrides, train_args


def test_quark_train_moe_tiny_loss_falls(tmp_path):
    bindings = tiny_overrides(tmp_path, 25, **{"quark_jax.TrainConfig.sample_prompts": "()",
                                               "quark_jax.TrainConfig.eval_batches": 0,
                                               "TASK_FEATURE_LENGTHS": "{'targets': 64}"})
    args = train_args(bindings)
    args.insert(2, f"--gin_file={os.path.join(REPO, 'configs/models/moe_tiny.gin')}")
    result = run_quark(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [r for r in read_metrics(tmp_path) if "loss" in r]
    assert [r["step"] for r in records] == list(range(1, 26))
    first, last = records[0], records[-1]
    assert last["loss"] < first["loss"] - 1.0, (first["loss"], last["loss"])
    for record in records:
        loads = [record[f"moe/expert_load_{e}"] for e in range(8)]
        assert abs(sum(loads) - 1.0) < 1e-4
        assert record["moe/load_balance_loss"] >= 0.99 and record["moe/router_z_loss"] > 0
        assert 0.0 <= record["moe/dropped_fraction"] < 0.5
