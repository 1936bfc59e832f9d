"""Small training runs for tests/test_accelerate.py, by plain python or under a distributed launcher.

    python tests/ddp_fit_script.py fit OUT.json [BATCH GRAD_ACCUM]    # clipadapt.finetune.fit_classifier
    python tests/ddp_fit_script.py vl OUT.json                        # clipadapt.vltrain.train_vl
    python tests/ddp_fit_script.py tta OUT.json DATA_ROOT             # clipadapt.methods.tta.corruption_benchmark
    accelerate launch --multi_gpu --num_processes 2 tests/ddp_fit_script.py fit OUT.json
"""
import copy
import json
import sys

import torch
from accelerate import PartialState
from torch import nn
from torch.utils.data import TensorDataset

from clipadapt.engine import TrainSpec
from clipadapt.finetune import fit_classifier

mode, out_path, *rest = sys.argv[1:]
if mode == "fit":
    torch.manual_seed(0)
    X = torch.randn(512, 20)
    y = (X @ torch.randn(20, 4)).argmax(1)
    model = nn.Sequential(nn.Linear(20, 32), nn.GELU(), nn.Linear(32, 4))
    batch, accum = (int(rest[0]), int(rest[1])) if rest else (32, 1)
    out = fit_classifier(model, TensorDataset(X[:384], y[:384]), TensorDataset(X[384:], y[384:]),
                         TrainSpec(epochs=6, batch_size=batch, warmup=1 / 6, eval_every=2, eval_last=1, lr=3e-3,
                                   grad_accum=accum))
    result = {"history": out["history"], "best": out["best"], "last": out["last"]}
elif mode == "tta":   # fake CIFAR-10-C under DATA_ROOT (tests/test_accelerate.py writes it), the tiny CLIP
    from clipadapt.chapters.batclip import bench_setup
    from clipadapt.methods.tta import corruption_benchmark
    from clipadapt.models import TINY_NAME, TINY_TAG, load_clip
    s = bench_setup("paper", "cifar10-c", data_root=rest[0])
    methods = {"zero-shot": {"method": "source"}, "BATCLIP": {"method": "batclip", **s.optim},
               "Tent": {"method": "tent", **s.optim}}
    loads = []   # (process, stream) of every backbone this process loaded

    def backbone():
        loads.append(PartialState().process_index)   # set up by corruption_benchmark
        return load_clip(TINY_NAME, TINY_TAG)
    df = corruption_benchmark(backbone, s.source, methods, ["fog", "snow", "frost"], (5, 3), batch_size=4, seed=0,
                              show_progress=False)
    model = nn.Linear(1, 1)   # nothing trained here; the table is the result
    from accelerate.utils import gather_object
    result = {"table": df.drop(columns="seconds").to_dict("records"), "loads": gather_object(loads)}
else:
    from test_vlpet import small_vl

    from clipadapt import vltrain
    from clipadapt.methods import vlpet
    model0, split, feats = small_vl()
    torch.manual_seed(3)
    model = vlpet.apply_method(copy.deepcopy(model0), "vl-pet-large")
    result = {"losses": vltrain.train_vl(model, split, feats, vltrain.recipe(epochs=8, batch_size=8, lr=3e-2), seed=3)}
state = PartialState()
if state.is_main_process:
    result.update(processes=state.num_processes,
                  weights=[p.detach().double().sum().item() for p in model.parameters() if p.requires_grad])
    json.dump(result, open(out_path, "w"))
# tear the process group down before the interpreter exits: a gloo group left to the exit handlers can abort a rank
# ("terminate called without an active exception", seen once in the corruption-stream test of a full run)
state.wait_for_everyone()
state.destroy_process_group()
