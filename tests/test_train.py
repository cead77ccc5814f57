import pytest
import torch

from dlnlab.analysis.runs import load_run
from dlnlab.model import DeepLinearNet
from dlnlab.recording.base import Cadence, Hook, Record
from dlnlab.recording.checkpoint import CheckpointHook
from dlnlab.recording.metrics import MetricsHook
from dlnlab.recording.table import TableHook
from dlnlab.runfolder import read_status
from dlnlab.steps import STEPS_PER_CALL, _scripted, run_steps
from dlnlab.tasks import make_completion, make_regression
from dlnlab.train import (
    IndexSampler,
    RecordSettings,
    RidgeSGD,
    Schedule,
    Trainer,
    dln_batch_factors,
)


@pytest.fixture
def task():
    return make_regression(m=12, d_x=4, d_y=3, spectrum=[3.0, 2.0, 1.0], noise=0.1, seed=0)


def objective(task, ws, ridge):
    """The explicit objective: loss + lambda * sum_h ||W_h||_F^2, per member."""
    return task.loss(ws) + ridge * sum(w.pow(2).sum((-1, -2)) for w in ws)


def test_ridge_step_is_a_gradient_step_on_the_explicit_objective(task):
    net = DeepLinearNet([4, 5, 5, 3], ensemble=2, init="gaussian", seed=0)
    ws0 = [w.detach().clone().requires_grad_(True) for w in net.weights]
    grads = torch.autograd.grad(objective(task, ws0, 0.3).sum(), ws0)
    opt = RidgeSGD(net.parameters(), lr=0.01, ridge=0.3)
    task.loss(list(net.weights)).sum().backward()
    opt.step()
    for w, w0, g in zip(net.weights, ws0, grads):
        torch.testing.assert_close(w.detach(), w0.detach() - 0.01 * g, rtol=1e-12, atol=1e-14)


def test_mean_sgd_gradient_is_the_gd_gradient(task):
    ws = [w.detach().requires_grad_(True) for w in DeepLinearNet([4, 5, 3], seed=1).weights]
    full = torch.autograd.grad(task.loss(ws).sum(), ws)
    per_sample = [torch.autograd.grad(task.batch_loss(ws, torch.tensor([[i]])).sum(), ws)
                  for i in range(task.n_samples)]
    for h in range(len(ws)):
        torch.testing.assert_close(sum(g[h] for g in per_sample) / task.n_samples, full[h])


def test_mean_sgd_gradient_is_the_gd_gradient_for_completion():
    task = make_completion(5, 4, rank=2, singular_values=[3.0, 1.0], noise=0.1, observed_fraction=0.6)
    ws = [w.detach().requires_grad_(True) for w in DeepLinearNet([4, 3, 3, 5], seed=1).weights]
    full = torch.autograd.grad(task.loss(ws).sum(), ws)
    per_entry = [torch.autograd.grad(task.batch_loss(ws, torch.tensor([[i]])).sum(), ws)
                 for i in range(task.n_samples)]
    for h in range(len(ws)):
        torch.testing.assert_close(sum(g[h] for g in per_entry) / task.n_samples, full[h])


class Collect(Hook):
    """Keeps every record's metrics: the smallest useful hook."""

    def __init__(self):
        self.rows = []

    def on_record(self, trainer, rec):
        self.rows.append((rec.step, {k: v.clone() for k, v in rec.metrics.items()}))


def sgd_run(task, seed, ensemble=1, steps=300, ridge=0.01, extra=()):
    net = DeepLinearNet([4, 5, 5, 3], ensemble=ensemble, init="gaussian", scale=0.5, seed=seed)
    col = Collect()
    tr = Trainer(net, task, optim="sgd", lr=0.02, steps=steps, ridge=ridge, batch_size=2, seed=seed,
                 hooks=[MetricsHook(), *extra, col], cadence=Cadence(every=50))
    tr.run()
    return net, col, tr


def test_same_seed_gives_bitwise_identical_records(task):
    _, a, _ = sgd_run(task, seed=3)
    _, b, _ = sgd_run(task, seed=3)
    _, c, _ = sgd_run(task, seed=4)
    assert [s for s, _ in a.rows] == [0, 50, 100, 150, 200, 250, 300]
    for (_, ma), (_, mb) in zip(a.rows, b.rows):
        assert ma.keys() == mb.keys()
        for k in ma:
            assert torch.equal(ma[k].nan_to_num(-1), mb[k].nan_to_num(-1)), k
    assert not torch.equal(a.rows[-1][1]["loss"], c.rows[-1][1]["loss"])


def test_ensemble_member_k_trains_like_the_network_seeded_k(task):
    ens, _, _ = sgd_run(task, seed=7, ensemble=3)
    for k in range(3):
        single, _, _ = sgd_run(task, seed=7 + k)
        for a, b in zip(ens.member(k), single.member(0)):
            assert torch.equal(a, b)  # bitwise: members share no reduction and no random stream


def test_sampler_stream_does_not_depend_on_ensemble_size():
    a = IndexSampler(50, 3, seed=5, ensemble=4, chunk=8)
    b = IndexSampler(50, 3, seed=7, ensemble=1, chunk=8)
    for _ in range(20):
        assert torch.equal(a.next()[2], b.next()[0])


def test_piecewise_constant_schedule():
    s = Schedule(0.1, milestones=[10, 20], values=[1.0, 0.5, 0.25])
    assert [s(t) for t in (0, 9, 10, 19, 20, 1000)] == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    periodic = Schedule(0.1, milestones=[5], values=[1.0, 0.1], cycle=8)
    assert [periodic(t) for t in (0, 4, 5, 7, 8, 13)] == [1.0, 1.0, 0.1, 0.1, 1.0, 0.1]
    assert Schedule(0.3)(123) == 0.3


def test_a_schedules_span_is_its_values_step_by_step():
    """`span` (what the fused loop takes per segment) equals calling the schedule at each step."""
    for s in (Schedule(0.1, [10, 20], [1.0, 0.5, 0.25]), Schedule(0.1, [5], [1.0, 0.1], cycle=8),
              Schedule(0.3), Schedule(0.1, [3, 4], [1.0, 2.0, 3.0], cycle=4)):
        for start in (0, 3, 4, 9, 19, 37):
            for n in (0, 1, 7, 25, 100):
                assert s.span(start, n) == [s(t) for t in range(start, start + n)]


def test_schedules_reach_the_optimizer(task):
    seen = []

    class LrSpy(Hook):
        def on_record(self, trainer, rec):
            seen.append((rec.step, rec.lr, rec.ridge))

    net = DeepLinearNet([4, 3, 3], seed=0)
    Trainer(net, task, lr=Schedule(0.01, [10], [0.01, 0.001]), steps=30,
            ridge=Schedule(0, [10], [0.0, 0.1]), hooks=[LrSpy()], cadence=Cadence(10)).run()
    assert seen[-1] == (30, 0.001, 0.1) and seen[1] == (10, 0.01, 0.0)


def test_single_network_stops_with_status_diverged(task, tmp_path):
    net = DeepLinearNet([4, 5, 3], init="gaussian", scale=3.0, seed=0)
    tr = Trainer(net, task, lr=5.0, steps=500, hooks=[MetricsHook(), TableHook(tmp_path)],
                 cadence=Cadence(every=1))
    result = tr.run()
    assert result.status == "diverged" and result.step < 500
    assert result.diverged_at == [result.step]
    status = read_status(tmp_path)
    assert status["status"] == "diverged" and status["diverged_members"] == {"0": result.step}
    df = load_run(tmp_path)
    assert len(df) >= 2 and df["status"].iloc[0] == "diverged"


def test_diverged_member_is_frozen_while_the_others_go_on(task):
    net = DeepLinearNet([4, 5, 3], ensemble=3, init="gaussian", scale=0.5, seed=0)
    with torch.no_grad():
        for w in net.weights:
            w[1] *= 40  # member 1 starts far too large for lr = 0.05
    col = Collect()
    result = Trainer(net, task, lr=0.05, steps=200, hooks=[MetricsHook(), col], cadence=Cadence(50)).run()
    assert result.status == "finished" and result.step == 200
    assert result.diverged_at[0] is None and result.diverged_at[2] is None
    assert result.diverged_at[1] is not None and result.diverged_at[1] < 200
    final = col.rows[-1][1]
    assert torch.isfinite(final["loss"][[0, 2]]).all()
    assert torch.isnan(final["rank"][1])


@pytest.mark.parametrize("record_batch", [1, 4])
def test_interrupt_keeps_the_table_and_a_checkpoint(task, tmp_path, record_batch):

    class CtrlC(Hook):
        def on_record(self, trainer, rec):
            if rec.step == 60:
                raise KeyboardInterrupt

    net = DeepLinearNet([4, 5, 3], seed=0)
    hooks = [MetricsHook(), TableHook(tmp_path), CheckpointHook(tmp_path / "ck"), CtrlC()]
    result = Trainer(net, task, lr=0.01, steps=1000, hooks=hooks, cadence=Cadence(20),
                     recording=RecordSettings(batch=record_batch)).run()
    assert result.status == "interrupted" and result.step == 60
    df = load_run(tmp_path)
    assert df["step"].tolist() == [0, 20, 40, 60] and set(df["status"]) == {"interrupted"}
    ck = torch.load(tmp_path / "ck" / "last.pt", weights_only=True)
    assert ck["step"] == 60
    for a, b in zip(ck["weights"], net.weights):
        assert torch.equal(a, b.detach())


def test_a_checkpoint_with_an_optimizer_entry_resumes_from_the_schedules(task, tmp_path):
    """Checkpoints written before the schedules were the one source of lr and lambda carry the
    optimizer's param group (`optimizer`): it is ignored on resume, whatever it says, and the run
    goes on bit for bit, records' lr and lambda included."""
    def trainer(col, out):
        net = DeepLinearNet([4, 5, 3], ensemble=2, init="gaussian", scale=0.5, seed=1)
        tr = Trainer(net, task, optim="sgd", lr=Schedule(0.02, [30, 70], [0.02, 0.01, 0.03]),
                     ridge=Schedule(0.0, [30], [0.01, 0.02]), steps=100, batch_size=2, seed=1,
                     hooks=[MetricsHook(), col, CheckpointHook(out)], cadence=Cadence(10),
                     recording=RecordSettings(checkpoint_every=30))
        return net, tr

    class Rates(Hook):
        def __init__(self):
            self.rows = []

        def on_record(self, trainer, rec):
            self.rows.append((rec.step, rec.lr, rec.ridge, rec.metrics["loss"].clone()))

    ref = Rates()
    full, tr = trainer(ref, tmp_path / "a")
    tr.run()
    ck = torch.load(tmp_path / "a" / "step_000000030.pt", weights_only=True)
    assert "optimizer" not in ck
    ck["optimizer"] = {"state": {}, "param_groups": [{"lr": 123.0, "ridge": 4.0, "params": [0, 1]}]}
    col = Rates()
    net, tr = trainer(col, tmp_path / "b")
    tr.resume(ck)
    tr.run()
    assert all(torch.equal(a.detach(), b.detach()) for a, b in zip(net.weights, full.weights))
    later = [r for r in ref.rows if r[0] > 30]
    assert [r[:3] for r in col.rows] == [r[:3] for r in later]
    assert all(torch.equal(a[3], b[3]) for a, b in zip(col.rows, later))


def test_log_spaced_cadence():
    c = Cadence(every=1000, log_spaced=2, last=5000)
    due = [s for s in range(5001) if c.due(s)]
    assert due == [0, 1, 3, 10, 32, 100, 316, 1000, 2000, 3000, 3162, 4000, 5000]


def test_finite_layers_whose_product_overflows_give_nan_spectra_not_a_crash(task):
    from types import SimpleNamespace


    ws = [w.detach().clone() for w in DeepLinearNet([4, 5, 5, 3], ensemble=2, seed=0).weights]
    for w in ws:
        w[1] *= 1e120  # each layer finite, the product of three is 1e360: inf in float64
    hook = MetricsHook(rank_floor=1.0)
    rec = Record(0, ws, torch.ones(2, dtype=torch.bool), 0.01, 0.0)
    hook.on_record(SimpleNamespace(task=task), rec)
    assert torch.isnan(rec.metrics["rank"][1]) and torch.isnan(rec.metrics["sv_3_1"][1]).all()
    assert torch.isfinite(rec.metrics["sv_3_1"][0]).all() and rec.metrics["rank"][0] >= 1


def test_last_checkpoint_keeps_each_members_last_good_weights(task, tmp_path):

    net = DeepLinearNet([4, 5, 3], ensemble=3, init="gaussian", scale=0.5, seed=0)
    with torch.no_grad():
        for w in net.weights:
            w[1] *= 40  # member 1 diverges within a few steps
    hooks = [MetricsHook(), CheckpointHook(tmp_path)]
    result = Trainer(net, task, lr=0.05, steps=200, hooks=hooks, cadence=Cadence(1)).run()
    assert result.diverged_at[1] is not None
    ck = torch.load(tmp_path / "last.pt", weights_only=True)
    good = ck["good_step"].tolist()
    assert good[0] == good[2] == 200 and 0 <= good[1] < result.diverged_at[1]
    weights = [w.double() for w in ck["weights"]]
    assert all(bool(torch.isfinite(w).all()) for w in weights)
    assert bool(torch.isfinite(task.loss(weights)).all())  # loadable and meaningful, member 1 included
    for a, b in zip(ck["weights"], net.weights):  # the healthy members are their final weights
        assert torch.equal(a[[0, 2]], b.detach()[[0, 2]])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kind", ["regression", "completion"])
def test_recorded_gradient_norm_is_that_of_the_explicit_objective(kind, dtype):
    """The metrics hook gets the gradient through the product (chain rule on partial products);
    compare it with autograd through the layers of loss + lambda ||theta||^2."""
    from types import SimpleNamespace


    if kind == "regression":
        task = make_regression(m=12, d_x=4, d_y=3, spectrum=[3.0, 2.0, 1.0], noise=0.1, seed=0)
    else:
        task = make_completion(3, 4, 1, [2.0], 0.1, observed_fraction=0.5, seed=0)
    task = task.to(dtype)
    net = DeepLinearNet([4, 5, 6, 3], ensemble=3, init="gaussian", seed=0, dtype=dtype)
    ws = [w.detach().clone().requires_grad_(True) for w in net.weights]
    grads = torch.autograd.grad(objective(task, ws, 0.05).sum(), ws)
    want = torch.sqrt(sum(g.double().pow(2).sum((-1, -2)) for g in grads))
    rec = Record(0, [w.detach() for w in net.weights], torch.ones(3, dtype=torch.bool), 0.01, 0.05)
    MetricsHook(rank_floor=1.0).on_record(SimpleNamespace(task=task), rec)
    rtol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(rec.metrics["grad_norm"].double(), want, rtol=rtol, atol=0.0)
    torch.testing.assert_close(rec.metrics["reg_loss"], objective(task, ws, 0.05).detach(), rtol=rtol, atol=0.0)


@pytest.mark.parametrize("kind, optim", [("regression", "gd"), ("regression", "sgd"), ("completion", "sgd")])
def test_factored_step_is_the_autograd_step_on_the_explicit_objective(kind, optim):
    """The trainer's fast path (gradient as deltas^T acts, one in-place baddbmm per layer) takes the
    same step as autograd on loss + lambda ||theta||^2 over the same batch, and leaves a frozen
    member untouched."""

    if kind == "regression":
        task = make_regression(m=12, d_x=4, d_y=3, spectrum=[3.0, 2.0, 1.0], noise=0.1, seed=0)
    else:
        task = make_completion(3, 4, 1, [2.0], 0.1, observed_fraction=0.75, seed=0)
    dims = [task.d_in, 5, 6, task.d_out]
    net = DeepLinearNet(dims, ensemble=3, init="gaussian", seed=1)
    ws0 = [w.detach().clone() for w in net.weights]
    idx = None if optim == "gd" else torch.randint(task.n_samples, (3, 4), generator=torch.Generator().manual_seed(0))
    batch = task.batch_arrays(idx)
    assert batch is not None
    losses, acts, deltas = dln_batch_factors(ws0, *batch)
    ws = [w.clone().requires_grad_(True) for w in ws0]
    want_loss = task.loss(ws) if idx is None else task.batch_loss(ws, idx)
    torch.testing.assert_close(losses, want_loss.detach(), rtol=1e-12, atol=0.0)
    lr, ridge = 0.01, 0.3
    grads = torch.autograd.grad((want_loss + ridge * sum(w.pow(2).sum((-1, -2)) for w in ws)).sum(), ws)
    opt = RidgeSGD(net.parameters(), lr=lr, ridge=ridge)
    opt.active_mask = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64).view(-1, 1, 1)  # member 1 frozen
    opt.factors = (acts, deltas)
    opt.step()
    for w, w0, g in zip(net.weights, ws0, grads):
        torch.testing.assert_close(w.detach()[[0, 2]], (w0 - lr * g)[[0, 2]], rtol=1e-12, atol=1e-14)
        assert torch.equal(w.detach()[1], w0[1])
    assert opt.factors is None  # consumed: the next step needs new ones


def test_gradient_norm_of_a_task_whose_loss_reads_the_layers(task):
    """A user's task may penalise the layers themselves (not a function of the product): the metrics
    hook then differentiates through the layers instead of through the product."""
    from types import SimpleNamespace


    class LayerPenalty:
        paper_scale = 1.0

        def loss(self, ws):
            return task.loss(ws) + sum(w.pow(4).sum((-1, -2)) for w in ws)

    net = DeepLinearNet([4, 5, 3], ensemble=2, init="gaussian", seed=0)
    ws = [w.detach().clone().requires_grad_(True) for w in net.weights]
    grads = torch.autograd.grad(LayerPenalty().loss(ws).sum(), ws)
    rec = Record(0, [w.detach() for w in net.weights], torch.ones(2, dtype=torch.bool), 0.01, 0.0)
    MetricsHook(rank_floor=1.0).on_record(SimpleNamespace(task=LayerPenalty()), rec)
    torch.testing.assert_close(rec.metrics["grad_norm"], torch.sqrt(sum(g.pow(2).sum((-1, -2)) for g in grads)))


@pytest.mark.parametrize("optim", ["gd", "sgd"])
def test_trainer_loop_is_bitwise_the_plain_optimizer_step(task, optim):
    """The trainer's factored step skips torch.optim's wrapper (dispatch cost only): its weights are
    bit for bit those of dln_batch_factors + RidgeSGD.step() through the wrapper, with ridge."""
    net = DeepLinearNet([4, 5, 6, 3], ensemble=3, init="gaussian", seed=2)
    ref = DeepLinearNet([4, 5, 6, 3], ensemble=3, init="gaussian", seed=2)
    Trainer(net, task, optim=optim, lr=0.01, ridge=0.1, steps=40, batch_size=2, seed=5).run()
    opt = RidgeSGD(ref.parameters(), lr=0.01, ridge=0.1)
    sampler = IndexSampler(task.n_samples, 2, 5, 3) if optim == "sgd" else None
    for _ in range(40):
        batch = task.batch_arrays(None if sampler is None else sampler.next())
        with torch.no_grad():
            _, acts, deltas = dln_batch_factors([w.detach() for w in ref.weights], *batch)
        opt.factors = (acts, deltas)
        opt.step()
    for a, b in zip(net.weights, ref.weights):
        assert torch.equal(a.detach(), b.detach())


@pytest.mark.parametrize("E", [1, 3])
@pytest.mark.parametrize("optim", ["gd", "sgd"])
def test_fused_loop_takes_the_general_loops_steps_bit_for_bit(task, optim, E):
    """Between records the trainer runs `run_steps` (fused=True, the default): with a schedule,
    ridge and records every 7 steps, the weights and every record equal the general loop's."""
    runs = []
    for fused in (True, False):
        net = DeepLinearNet([4, 5, 6, 3], ensemble=E, init="gaussian", seed=2)
        col = Collect()
        tr = Trainer(net, task, optim=optim, lr=Schedule(0.01, [20], [0.01, 0.02]), ridge=0.1, steps=45,
                     batch_size=2, seed=5, hooks=[MetricsHook(), col],
                     cadence=Cadence(every=7), fused=fused)
        assert tr.fused is fused
        tr.run()
        runs.append((net, col, tr))
    (a, ca, ta), (b, cb, tb) = runs
    for wa, wb in zip(a.weights, b.weights):
        assert torch.equal(wa.detach(), wb.detach())
    assert [s for s, _ in ca.rows] == [s for s, _ in cb.rows] == [0, 7, 14, 21, 28, 35, 42, 45]
    for (_, ma), (_, mb) in zip(ca.rows, cb.rows):
        assert all(torch.equal(ma[k], mb[k]) for k in ("loss", "rank"))
    assert ta.lr == tb.lr == 0.02


@pytest.mark.parametrize("optim", ["gd", "sgd"])
def test_fused_loop_hands_a_diverging_step_to_the_general_loop(task, optim):
    """A member whose loss turns non-finite mid-segment is frozen at the same step either way, and
    the others train on, as a smaller batch, exactly as under the general loop's mask."""
    results = []
    for fused in (True, False):
        net = DeepLinearNet([4, 5, 3], ensemble=3, init="gaussian", scale=0.5, seed=0)
        with torch.no_grad():
            for w in net.weights:
                w[1] *= 40
        tr = Trainer(net, task, optim=optim, lr=0.05, steps=60, batch_size=3, hooks=[MetricsHook()],
                     cadence=Cadence(25), fused=fused)
        results.append((tr.run(), net))
    (ra, na), (rb, nb) = results
    assert ra.diverged_at == rb.diverged_at and ra.diverged_at[1] is not None
    for wa, wb in zip(na.weights, nb.weights):
        assert torch.equal(wa.detach().nan_to_num(7.0), wb.detach().nan_to_num(7.0))


@pytest.mark.parametrize("per_step", [True, False])
def test_the_torchscript_loop_is_the_python_loop_bit_for_bit(per_step):
    """run_steps compiles its loop with TorchScript on the CPU; the plain Python loop (script=False,
    and where TorchScript is missing) gives the same weights, and both stop before the same
    non-finite step. Segments longer than STEPS_PER_CALL cross the calls' boundaries."""
    assert _scripted() is not None   # this torch has TorchScript: the default path is the compiled one
    g = torch.Generator().manual_seed(0)
    n, E = STEPS_PER_CALL + 37, 3
    ws0 = [0.4 * torch.randn(E, a, b, generator=g, dtype=torch.float64) for a, b in ((5, 4), (6, 5), (3, 6))]
    x = torch.randn(n, E, 2, 4, generator=g, dtype=torch.float64) if per_step else torch.randn(9, 4, generator=g, dtype=torch.float64)
    y = torch.randn(n, E, 2, 3, generator=g, dtype=torch.float64) if per_step else torch.randn(9, 3, generator=g, dtype=torch.float64)
    lrs = [0.01 if t < 50 else 0.02 for t in range(n)]
    ridges = [0.1] * n
    if per_step:
        x[80, 1] = float("inf")   # member 1's batch at step 80 has a non-finite loss
    out = []
    for script in (True, False):
        ws = [w.clone() for w in ws0]
        out.append((run_steps(ws, x, y, lrs, ridges, script=script), ws))
    (na, wa), (nb, wb) = out
    assert na == nb == (80 if per_step else n)
    assert all(torch.equal(a, b) for a, b in zip(wa, wb))
    assert not any(torch.equal(a, b) for a, b in zip(wa, ws0))


def test_sampler_take_and_rewind_keep_the_stream():
    a, b = IndexSampler(50, 2, seed=1, ensemble=2, chunk=8), IndexSampler(50, 2, seed=1, ensemble=2, chunk=8)
    got = a.take(5)
    assert got.shape == (5, 2, 2)
    a.rewind(2)
    got = torch.cat([got[:3], a.take(100)])  # stops at the chunk's end: 5 more
    assert got.shape[0] == 8
    got = torch.cat([got, a.take(3)])
    assert torch.equal(got, torch.stack([b.next() for _ in range(11)]))


def test_completion_and_other_losses_keep_the_general_loop():
    comp = make_completion(3, 4, 1, [2.0], 0.1, observed_fraction=0.75, seed=0)
    assert not Trainer(DeepLinearNet([4, 3, 3]), comp, optim="sgd", lr=0.05).fused
