"""Two CPU processes (torchrun, gloo): data-parallel training keeps the ranks identical and
only rank 0 writes. Kept short (a handful of steps); marked ``distributed``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from test_train import FAST, make_pairs

DRIVER = textwrap.dedent('''
    import hashlib, json, os, sys
    import torch
    torch.set_num_threads(1)
    import refsr.train.loop as loop
    from refsr.train import TrainOptions, run_training
    from refsr.train.diffusion import DiffusionStage

    manifest, matches, out = sys.argv[1:4]
    rank = int(os.environ["RANK"])
    calls = []
    original = loop.save_checkpoint
    def spy(*args, **kwargs):
        calls.append(kwargs.get("step", args[4]))
        return original(*args, **kwargs)
    loop.save_checkpoint = spy
    stage = DiffusionStage(manifest, config=json.load(open(os.path.join(os.path.dirname(manifest), "config.json"))),
                           kind="ldm-ca", matches=matches, seed=1)
    run_training(stage, TrainOptions(output=out, steps=3, batch_size=1, lr=2e-3, device="cpu",
                                     checkpoint_every=2, validate_every=0, log_every=1, warmup_steps=0))
    h = hashlib.sha256()
    for name, p in sorted(stage.model.state_dict().items()):
        h.update(name.encode()); h.update(p.detach().cpu().numpy().tobytes())
    json.dump({"hash": h.hexdigest(), "checkpoints": calls}, open(os.path.join(out, f"rank{rank}.json.tmp"), "w"))
''')


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.distributed
def test_two_cpu_processes_hold_identical_weights_and_only_rank0_writes(tmp_path, astronaut, coffee):
    manifest, matches = make_pairs(tmp_path / "pairs", {"astronaut": astronaut, "coffee": coffee})
    (tmp_path / "driver.py").write_text(DRIVER)
    out = tmp_path / "run"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "REFSR_QUIET": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           str(tmp_path / "driver.py"), str(manifest), str(matches), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.loads((out / f"rank{r}.json.tmp").read_text()) for r in (0, 1))
    assert r0["hash"] == r1["hash"]
    assert r0["checkpoints"] == [2, 3] and r1["checkpoints"] == []
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000002", "step-0000003"]
    run = json.loads((out / "run.json").read_text())
    assert run["processes"] == 2 and run["global_batch"] == 2
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
