"""The pod configurations quark_jax ships: each model of ``configs/models`` with the TPU slice, mesh, batch and
sequence length of its launch example (``launch/gke/*.yaml`` and the README's "Before you launch"). The tests
compile each for its slice; ``test_pod_configs`` also checks that every shipped JobSet is one of these."""

RUN = "configs/runs/pretrain.gin"

# name: (topology, gin files, bindings of the launch command besides MODEL_DIR and TRAIN_STEPS)
POD_CONFIGS = {
    "1b": ("v5e:4x4", [RUN, "configs/models/1b.gin"],
           ["MESH_SHAPE='fsdp=-1'", "BATCH_SIZE=64", "TASK_FEATURE_LENGTHS={'targets':2048}"]),
    "7b": ("v5e:16x16", [RUN, "configs/models/7b.gin"],
           ["MESH_SHAPE='fsdp=-1'", "BATCH_SIZE=256", "TASK_FEATURE_LENGTHS={'targets':2048}"]),
    # Capacity dispatch: the dropless sort runs over the global batch, which GSPMD does not split (on this
    # slice it needs ~103 GiB of temporaries per chip; the compiler refuses it).
    "mixtral_8x7b": ("v5p:4x4x8", [RUN, "configs/models/mixtral_8x7b.gin"],
                     ["MESH_SHAPE='fsdp=-1,expert=8'", "BATCH_SIZE=128", "TASK_FEATURE_LENGTHS={'targets':4096}",
                      "quark_jax.ModelConfig.moe_dispatch='capacity'"]),
}
