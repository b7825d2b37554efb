"""Helper for test_objectives_sharded: runs every post-training objective for a few steps on this process's
devices and prints their losses as one JSON report.

Run as ``XLA_FLAGS=--xla_force_host_platform_device_count=N python objectives_run.py BASE_DIR OUT_DIR MESH_SHAPE``
where BASE_DIR is a trained tiny-model run (teacher, LoRA base, reference and PPO start).
"""

import json
import os
import sys

sys.path.insert(0, __file__.rsplit("/", 2)[0])  # tests/ for conftest helpers
from conftest import REPO, read_metrics, tiny_overrides  # noqa: E402

import quark_jax as qj  # noqa: E402

STEPS = 3
PAIRS = {"TASK_FEATURE_LENGTHS": "{'targets': 32}"}
RUNS = {
    "distill": (["distill.gin"], {"TEACHER_DIR": "{base}"}),
    "lora": (["sft.gin", "lora.gin"], {"INIT_FROM": "{base}"}),
    "reward": (["reward.gin"], {"INIT_FROM": "{base}", **PAIRS}),
    "dpo": (["dpo.gin"], {"INIT_FROM": "{base}", **PAIRS}),
    "ppo": (["ppo.gin"], {"INIT_FROM": "{base}", "quark_jax.PPO.max_new_tokens": 8, "quark_jax.PPO.num_minibatches": 2,
                          # the toy task of tests/training/test_ppo.py: a reward the 40-step model already earns
                          "quark_jax.PPO.prompts": "('def ', 'import ', 'x = ', 'print(')",
                          "quark_jax.PPO.prompt_filter": None, "quark_jax.PPO.max_prompt_tokens": 8,
                          "quark_jax.PPO.reward_fn": "'digit_fraction'"}),
}
KEYS = ("loss", "grad_norm", "distill_kl", "rewards/margin", "reward/mean", "kl", "value_loss")


def main(base_dir: str, out_dir: str, mesh_shape: str) -> None:
    report = {}
    for name, (files, extra) in RUNS.items():
        model_dir = os.path.join(out_dir, name)
        bindings = {k: repr(v.format(base=base_dir)) if isinstance(v, str) and "{base}" in v else v
                    for k, v in extra.items()}
        overrides = tiny_overrides(model_dir, STEPS, MESH_SHAPE=repr(mesh_shape), CHECKPOINT_PERIOD=STEPS, **{
            "quark_jax.TrainConfig.eval_batches": 0, "quark_jax.TrainConfig.sample_prompts": "()",
            "quark_jax.CheckpointConfig.async_save": False, **bindings})
        qj.Trainer.from_gin([f"{REPO}/configs/runs/{f}" for f in files], overrides).run()
        report[name] = {r["step"]: {k: r[k] for k in KEYS if k in r} for r in read_metrics(model_dir) if "loss" in r}
    print("REPORT " + json.dumps(report))


if __name__ == "__main__":
    main(*sys.argv[1:])
