"""The class signal (experiments/semi_supervised.py: class_signal) of M2 runs, read from
their checkpoints (also of runs whose directories predate the recorded validation split:
their data.json has no source, so the experiment cannot reopen them), on the same first
1,000 validation images (binarized runs: the fixed draw; grey runs: the grey levels). Written
into each run's validation/NAME.json (``class_signal_by`` says by what); README.md rebuilt.

    .venv/bin/python results/semi_supervised/class_signal_of.py \
        results/semi_supervised/runs/NAME ...
"""

import json
import sys
from pathlib import Path

import pyro

from pyro_vae import load_dataset
from pyro_vae.rundir import declare_params, load_checkpoint, restore_params

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments"))
import semi_supervised as ss  # noqa: E402

assert len(sys.argv) > 1, __doc__

for run in map(Path, sys.argv[1:]):
    path = run.parents[1] / "validation" / f"{run.name}.json"
    result = json.loads(path.read_text())
    data = load_dataset("mnist" if result["pixels"] == "grey" else "mnist-binary")
    valid = data.held_out(ss.VALIDATION).keep_labels(result["labels"], result["label_seed"])
    x, y = valid.evaluation("test")[:1000], valid.y_test[:1000]
    m2 = ss.M2(x_dim=784, z_dim=result.get("z_dim", 50), hidden=result["hidden"],
               alpha=result["alpha"], grey=result["pixels"] == "grey")
    pyro.clear_param_store()
    restore_params(declare_params(m2.model, m2.guide, x[:8], y[:8]),
                   load_checkpoint(run)["params"], run)
    signal = ss.class_signal(m2, x, y)
    print(f"{run.name}: classifier error {signal['classifier_error']:.2f} %, argmax_y "
          f"L(x, y) error {signal['generative_error']:.1f} %, max - median L "
          f"{signal['class_spread']:.2f} nats", flush=True)
    result.update(signal, class_signal_by=" ".join(["python", *sys.argv]))
    path.write_text(json.dumps(result, indent=1) + "\n")
ss.write_readme(Path(__file__).resolve().parent)
