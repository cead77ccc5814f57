"""dlnlab benchmarks: every figure is a ratio (or a time) measured in this one run.

    .venv/bin/python scripts/bench.py            # all sections
    .venv/bin/python scripts/bench.py train      # one section

Targets (issue numbers in brackets):
  train     [2] SGD batch 1, H = 4, width 32: steps/s with recording at the default cadence
                divided by steps/s with no hooks (target >= 0.9), with the trainer's factored
                step, without the classifier, and with the autograd step; ensemble E = 256
                model-steps/s divided by one network's (target >= 20)
  classify  [3] Theorem 7 label of one checkpoint, H = 4, width 32, no Hessian (target < 5 ms);
                Hessian smallest eigenvalue against the parameter count (target 100k < 30 s)
  jumps     [4] recipe R1 with 256 SGD members on 2 threads (target < 60 s); tracker cost/record
  load      [5] load_runs on 1,000 runs x 1,000 records (target < 10 s)
  peer     [13] against a hand-written nn.Sequential + torch.optim.SGD loop recording every 100 steps
                (H = 4, width 32, m = 256, SGD batch 1, float64, 1 thread): one network with the
                classifier (target >= 3x), its recording/no-hook ratio (>= 0.9), E = 256 recorded
                (>= 100x the loop, >= 0.5x the same ensemble without hooks), Theorem 7 labels per
                member-checkpoint at E = 256 (<= 0.1 ms); peak memory of each section
  gpu      [13] E = 4096 recorded on CUDA against the same on the CPU (skipped without CUDA)
"""
from __future__ import annotations

import copy
import sys
import tempfile
import time

import runs_fixture
import torch
from bench_jumps import bench_r1, bench_tracker
from bench_landscape import bench_classify as bench_landscape
from bench_peer import bench_peer as bench_peer_sections
from bench_peer import dlnlab_sps

from dlnlab.experiments.build import (
    build_hooks,
    build_net,
    build_trainer,
    compose,
    prepare,
)

BENCH_OVERRIDES = ["optim=sgd", "optim.lr=1e-4", "optim.batch_size=1", "model.depth=4",
                   "model.width=32", "model.init.kind=gaussian", "model.init.scale=1.0",
                   "task.m=256", "task.d_x=32", "task.d_y=32", "task.spectrum=[]",
                   "record.progress=off"]


def steps_per_second(overrides, steps, hooks: bool, repeats: int = 3, autograd: bool = False) -> float:
    """Best of `repeats` (the least disturbed by other load on a shared machine). autograd=True:
    the loop without the factored step (gradients through autograd, as a custom loss would)."""
    cfg = compose(BENCH_OVERRIDES + [f"optim.steps={steps}"] + overrides)
    task = prepare(cfg)
    if autograd:
        task = copy.copy(task)
        task.batch_arrays = lambda idx: None  # no batch arrays: the trainer falls back to autograd
    best = 0.0
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as out:
            net = build_net(cfg, task)
            trainer = build_trainer(cfg, task, net, build_hooks(cfg, out) if hooks else [], out)
            t0 = time.perf_counter()
            trainer.run()
            best = max(best, steps / (time.perf_counter() - t0))
    return best


def bench_train() -> None:
    torch.set_num_threads(1)
    steps = 12000  # the default experiment's length: start-up and final writes count as in a real run
    records = steps // 100 + 1  # record.every = 100 (the default cadence)
    print(f"train   H=4 width=32 SGD batch 1, {steps} steps, 1 thread, default cadence ({records} records)")
    rows = [("factored step (default)", [], False), ("without the classifier", ["classify.enabled=false"], False),
            ("autograd step", [], True)]
    for name, extra, autograd in rows:
        # interleaved, best of each: the machine is shared and its load drifts
        plain = recorded = 0.0
        for _ in range(3):
            plain = max(plain, steps_per_second([], steps, hooks=False, repeats=1, autograd=autograd))
            recorded = max(recorded, steps_per_second(extra, steps, hooks=True, repeats=1, autograd=autograd))
        per_record = (1 / recorded - 1 / plain) * steps / records * 1e3
        print(f"        {name:26s} no hooks {plain:6.0f} steps/s, recording {recorded:6.0f} steps/s: "
              f"ratio {recorded / plain:.3f} (target >= 0.9); {per_record:.2f} ms per record")
    E, e_steps = 256, 400
    one = steps_per_second([], e_steps, hooks=False)
    many = steps_per_second([f"model.ensemble={E}"], e_steps, hooks=False)
    print(f"        ensemble E={E}: {many * E:9.0f} model-steps/s vs {one:.0f}: "
          f"ratio {many * E / one:.1f}x  (target >= 20x)")
    one = steps_per_second([], e_steps, hooks=False, autograd=True)
    many = steps_per_second([f"model.ensemble={E}"], e_steps, hooks=False, autograd=True)
    print(f"        ensemble E={E}, autograd step: {many * E:9.0f} model-steps/s vs {one:.0f}: "
          f"ratio {many * E / one:.1f}x")


def bench_classify() -> None:
    r = bench_landscape()
    print("classify  H=4 width=32 m=64, one checkpoint, no Hessian (target < 5 ms)")
    for kind, ms in r["classify_ms"].items():
        print(f"        {kind:18s} {ms:7.2f} ms")
    print(f"        Hessian smallest eigenvalue (first torch.func call: {r['hessian_warmup_s']:.1f} s, once)")
    for P, row in r["hessian_s"].items():
        print(f"        P = {P:7d}  {row}")


def bench_jumps() -> None:
    r = bench_r1(members=256, threads=2)
    print(f"jumps   R1 with {r['members']} SGD members, {r['threads']} threads: {r['wall_time']:.1f} s "
          f"(target < 60 s); phases {({k: round(v, 1) for k, v in r['phases'].items()})}")
    print(f"        jumped {r['jumped']} ({r['fraction_jumped']}), first jump (layer rank) "
          f"{r['first_jump_layer']}, increases {r['increases_layer']}, GD final rank {r['gd_final_layer_rank']}")
    for E in (16, 256):
        t = bench_tracker(members=E)
        print(f"        tracker, {E:3d} members: {t['seconds_per_record'] * 1e3:.2f} ms/record "
              f"(the metrics hook itself: {t['metrics_hook_seconds_per_record'] * 1e3:.2f} ms)")


def bench_load() -> None:
    r = runs_fixture.bench_load(runs=1000, records=1000)
    print(f"load    load_runs: {r['runs']} runs, {r['rows']} rows x {r['columns']} columns in "
          f"{r['seconds']:.1f} s (target < 10 s; {r['cpus']} cpus; fixture written in {r['fixture_seconds']:.1f} s)")


def bench_peer() -> None:
    r = bench_peer_sections()
    sps, E = r["sps"], r["E"]
    hand = sps["hand-written"]
    print(f"peer    H=4 width=32 m=256 SGD batch 1 float64, torch on 1 thread (dlnlab's hooks on their record "
          f"thread: a second core; '1 core': record.thread=off), default cadence; "
          f"{r['steps']} steps (one network), {r['e_steps']} steps (E={E})")
    for name, v in sps.items():
        print(f"        {name:18s} {v:10.0f} model-steps/s  {v / hand:7.2f}x the hand-written loop  "
              f"peak RSS +{r['mem_mib'][name]:.0f} MiB")
    print(f"        one network, recording / hand-written {sps['one, recording'] / hand:.2f} (target >= 3); "
          f"recording / no hooks {sps['one, recording'] / sps['one, no hooks']:.3f} (target >= 0.9)")
    rec, plain = sps[f"E={E}, recording"], sps[f"E={E}, no hooks"]
    print(f"        E={E} recording / hand-written {rec / hand:.1f} (target >= 100); "
          f"recording / no hooks {rec / plain:.3f} (target >= 0.5)")
    one = sps["one, rec., 1 core"]
    print(f"        on one core (record.thread=off): one network {one / hand:.2f}x the hand-written loop, "
          f"{one / sps['one, no hooks']:.3f} of no hooks; E={E} {sps[f'E={E}, rec., 1 core'] / plain:.3f} of no hooks")
    print(f"        Theorem 7 labels at E={E}: {r['classify_ms']:.3f} ms per member-checkpoint (target <= 0.1); "
          f"metrics hook {r['metrics_ms']:.3f} ms; peak RSS +{r['mem_mib']['classify']:.0f} MiB")
    print("        (memory: peak RSS above the RSS at the section's start, sampled every 2 ms)")


def bench_gpu(E: int = 4096, steps: int = 300) -> None:
    """E members recorded at the default cadence (every 100 steps), the peer section's shapes, on
    CUDA and on the CPU: model-steps/s of each and their ratio (float32 and float64)."""
    if not torch.cuda.is_available():
        print("gpu     no CUDA device here: skipped (run `scripts/bench.py gpu` on a machine with one)")
        return
    print(f"gpu     {torch.cuda.get_device_name()}: E={E}, {steps} SGD steps, H=4 width=32 m=256, recorded "
          f"every 100 steps (records on the CPU in float64)")
    for precision in ("float32", "float64"):
        sps = {}
        for device in ("cuda", "cpu"):
            over = [f"model.ensemble={E}", f"device={device}", f"precision={precision}"]
            sps[device] = dlnlab_sps(over, steps, hooks=True) * E
            sps[device + " no hooks"] = dlnlab_sps(over, steps, hooks=False) * E
        print(f"        {precision}: cuda {sps['cuda']:.0f} model-steps/s recorded ({sps['cuda no hooks']:.0f} "
              f"without hooks), cpu {sps['cpu']:.0f} ({sps['cpu no hooks']:.0f}); "
              f"cuda / cpu recorded {sps['cuda'] / sps['cpu']:.1f}x, without hooks "
              f"{sps['cuda no hooks'] / sps['cpu no hooks']:.1f}x")


SECTIONS = {"train": bench_train, "classify": bench_classify, "jumps": bench_jumps, "load": bench_load,
            "peer": bench_peer, "gpu": bench_gpu}


def main(argv) -> None:
    names = argv or list(SECTIONS)
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        sys.exit(f"bench.py: unknown section(s) {unknown}; allowed: {', '.join(SECTIONS)}")
    for n in names:
        SECTIONS[n]()


if __name__ == "__main__":
    main(sys.argv[1:])
