"""Helper for test_pod_configs (its own process, so that libtpu never loads into pytest's): compiles the train
step of the pod configurations named on the command line for TPU slices and prints, per configuration, XLA's
memory per device beside the planner's estimate for the same configuration.

    python tests/plan/pod_compile_run.py NAME[:TOPOLOGY[:LAYERS]] ...

TOPOLOGY replaces the configuration's slice (and the batch shrinks with it, keeping the rows per device of
the shipped slice) and LAYERS its depth: the test's budget. Without them the configuration compiles exactly as
shipped (what the README's table reports).
"""

import dataclasses
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from pod_configs import POD_CONFIGS  # noqa: E402

from quark_jax import gin_utils  # noqa: E402
from quark_jax.plan import plan  # noqa: E402
from quark_jax.topology import topology  # noqa: E402
from quark_jax.training.aot import DoesNotFit, compile_for_topology  # noqa: E402


def main(cases):
    rows = []
    for case in cases:
        name, *rest = case.split(":")  # NAME[:CHIP:SHAPE[:LAYERS]]
        target, files, bindings = POD_CONFIGS[name]
        slice_name = ":".join(rest[:2]) if rest else target
        layers = rest[2] if len(rest) > 2 else ""
        gin_utils.parse(files, [*bindings, "MODEL_DIR='gs://unused/run'", "TRAIN_STEPS=1000"])
        config = gin_utils.build_train_config()
        if layers:
            config = dataclasses.replace(config, model=dataclasses.replace(config.model, num_layers=int(layers)))
        devices = topology(slice_name)
        shipped = topology(target).num_devices
        if devices.num_devices != shipped:
            batch = config.data.batch_size * devices.num_devices // shipped
            config = dataclasses.replace(config, data=dataclasses.replace(config.data, batch_size=batch))
        lengths = config.data.task_feature_lengths["targets"]
        row = {"name": name, "topology": devices.name, "layers": config.model.num_layers, "mesh": config.mesh_shape,
               "batch_size": config.data.batch_size, "seq_len": lengths, "hbm_bytes": devices.hbm_bytes,
               "plan_bytes": plan(config.model, config.mesh_shape, devices.num_devices, config.data.batch_size,
                                  lengths).total_bytes}
        try:
            report = compile_for_topology(config, devices)
            row.update(xla_bytes=report.total_bytes, xla_argument_bytes=report.argument_bytes,
                       xla_temp_bytes=report.temp_bytes, fits=report.fits, compile_s=round(report.compile_s, 1),
                       flops=report.flops)
        except DoesNotFit as e:
            row.update(fits=False, error=str(e))
        print(json.dumps(row), flush=True)
        rows.append(row)
    print("REPORT " + json.dumps(rows))


if __name__ == "__main__":
    main(sys.argv[1:])
