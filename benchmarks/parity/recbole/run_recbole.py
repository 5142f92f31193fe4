"""Run one RecBole 1.2.1 model on reasonrec's exported split (see docs/parity.md).

    OMP_NUM_THREADS=1 /path/to/recbole-venv/bin/python run_recbole.py DeepFM b 0 > DeepFM_b_s0.json

Runs in RecBole's own venv, never in reasonrec's. Arguments: model, setting (a: with the context
fields; b: ids + side fields), seed. Prints RecBole's result dict as JSON.
"""

import json
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)
# RecBole 1.2.1 pickles its config into the checkpoint it reloads before testing; torch >= 2.6 loads
# weights only by default. The checkpoint is the one this run just wrote, so a full load is safe.
_load = torch.load
torch.load = lambda *a, **k: _load(*a, **{"weights_only": False, **k})

from recbole.quick_start import run_recbole  # noqa: E402

here = Path(__file__).resolve().parent
model, setting, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
configs = [str(here / "base.yaml"), str(here / f"setting_{setting}.yaml")]
if model == "NeuMF":
    configs.append(str(here / "neumf.yaml"))
result = run_recbole(model=model, dataset="ml-100k-reasonrec", config_file_list=configs, config_dict={"seed": seed})
print(json.dumps({k: (dict(v) if hasattr(v, "items") else v) for k, v in result.items()}, default=float))
