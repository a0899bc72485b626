"""snntorch drop-in neurons: conventions of snntorch 1.0, and the same numbers as evsnn's layers."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

snn = pytest.importorskip("snntorch")
import snntorch.functional as SF  # noqa: E402
import snntorch.surrogate as snn_surrogate  # noqa: E402
from snntorch import utils as snn_utils  # noqa: E402
from snntorch.functional import probe  # noqa: E402

import evsnn  # noqa: E402
from evsnn.functional import alif_initial_state, decay  # noqa: E402
from evsnn.interop import snntorch as esnn  # noqa: E402

T, B, NI, H, C = 4, 8, 5, 12, 3


def _data(seed: int = 0, dtype=torch.float32):
    """A small, learnable task: each class drives a different third of the inputs."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(B) % C
    base = torch.zeros(B, NI)
    for k in range(C):
        base[y == k, k] = 1.0
    x = base + 0.3 * torch.rand(B, NI, generator=g)
    return x.to(dtype), y


def _make_neuron(kind: str, n_in: int, n_out: int, **kw) -> nn.Module:
    if kind == "alif":
        return esnn.ALIF(**kw)
    if kind == "egru":
        return esnn.EGRU(n_in, n_out, **kw)
    if kind == "delta_gru":
        return esnn.DeltaGRU(n_in, n_out, threshold=0.02, **kw)
    return esnn.DeltaLSTM(n_in, n_out, threshold=0.02, **kw)


def _tutorial_net(kind: str) -> nn.Sequential:
    # For ALIF the neuron follows its Linear (it takes a current); the other families own weights.
    if kind == "alif":
        return nn.Sequential(
            nn.Linear(NI, H), esnn.ALIF(init_hidden=True), nn.Linear(H, C), esnn.ALIF(init_hidden=True, output=True)
        )
    return nn.Sequential(
        nn.Linear(NI, H),
        _make_neuron(kind, H, H, init_hidden=True),
        nn.Linear(H, H),
        _make_neuron(kind, H, C, init_hidden=True, output=True),
    )


def _run(net: nn.Module, x: torch.Tensor, steps: int = T) -> torch.Tensor:
    esnn.reset(net)
    outs = []
    for _ in range(steps):
        out = net(x)
        outs.append(out[0] if isinstance(out, tuple) else out)
    return torch.stack(outs)


def _train(net: nn.Module, iters: int = 20) -> list[float]:
    opt = torch.optim.Adam(net.parameters(), lr=2e-2)
    loss_fn = SF.ce_rate_loss()
    batches = [_data(0), _data(1)]
    losses = []
    for it in range(iters):
        x, y = batches[it % 2]  # consecutive batches reuse the neurons' buffers
        spk = _run(net, x)
        loss = loss_fn(spk, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        acc = SF.accuracy_rate(spk, y)
        assert 0.0 <= acc <= 1.0
    return losses


KINDS = ["alif", "egru", "delta_gru", "delta_lstm"]


@pytest.mark.parametrize("kind", KINDS)
def test_tutorial_network_trains(kind):
    torch.manual_seed(0)
    losses = _train(_tutorial_net(kind))
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.02, losses


class _Nested(nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        self.block = nn.ModuleDict({"inner": _tutorial_net(kind)})

    def forward(self, x):
        return self.block["inner"](x)


@pytest.mark.parametrize("kind", ["alif", "egru"])
def test_nested_and_deepcopied_networks_train(kind):
    torch.manual_seed(1)
    nested = _Nested(kind)
    losses = _train(nested, iters=8)
    assert losses[-1] < losses[0]
    clone = copy.deepcopy(nested)
    losses = _train(clone, iters=4)
    assert all(math.isfinite(v) for v in losses)
    # The copy has its own buffers: resetting it leaves the original alone.
    x, _ = _data(0)
    nested(x)
    esnn.reset(clone)
    assert nested.block["inner"][1].mem.numel() > 0
    assert clone.block["inner"][1].mem.numel() == 0


def test_reset_reaches_deep_copies_that_snntorch_utils_misses():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Sequential(nn.Linear(NI, H), snn.Leaky(beta=0.9, init_hidden=True)))
    clone = copy.deepcopy(net)
    x, _ = _data(0)
    clone(x)
    assert clone[0][1].mem.grad_fn is not None
    snn_utils.reset(clone)  # looks only at direct children, and only at SpikingNeuron.instances
    assert clone[0][1].mem.grad_fn is not None
    esnn.reset(clone)
    assert clone[0][1].mem.grad_fn is None and not bool(clone[0][1].mem.any())


def test_without_reset_consecutive_batches_backprop_into_a_freed_graph():
    """The failure :func:`reset` prevents, shown on the evsnn neuron itself."""
    torch.manual_seed(0)
    net = _tutorial_net("alif")
    x, y = _data(0)
    SF.ce_rate_loss()(_run(net, x), y).backward()
    out = torch.stack([net(x)[0] for _ in range(2)])
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        out.sum().backward()


@pytest.mark.parametrize("kind", KINDS)
def test_init_hidden_rejects_state_with_snntorch_type_error(kind):
    neuron = _make_neuron(kind, NI, H, init_hidden=True)
    x = torch.randn(B, NI if kind != "alif" else H)
    out = neuron(x)
    assert isinstance(out, torch.Tensor) and out.shape == (B, H)
    with pytest.raises(TypeError, match="init_hidden=True"):
        neuron(x, out)


def test_state_buffers_are_tensors_allocated_from_the_state_shape():
    d = esnn.DeltaGRU(NI, H, threshold=0.1)
    for name in ("h", "x_hat", "h_hat", "m"):
        assert isinstance(getattr(d, name), torch.Tensor) and getattr(d, name).numel() == 0
    d(torch.randn(B, NI))
    assert d.h.shape == (B, H) and d.x_hat.shape == (B, NI) and d.m.shape == (B, 4 * H)
    d(torch.randn(2, NI))  # a new batch size starts a fresh state of the state's own shape
    assert d.x_hat.shape == (2, NI)
    with pytest.raises(ValueError, match=r"'m' must have shape \(2, 48\)"):
        d(torch.randn(2, NI), d.h, d.x_hat, d.h_hat, torch.zeros(2, 3))
    a = esnn.ALIF(threshold=0.05, convention="spec")
    a(torch.zeros(3, H))
    # b starts at b0 (SPEC §2), not at zero: with no spike it decays to ρ·b0 after one step.
    torch.testing.assert_close(a.b, torch.full((3, H), 0.05) * a.rho)
    # snntorch's convention starts every state at zero, the trace included.
    a = esnn.ALIF(threshold=0.05)
    a(torch.zeros(3, H))
    assert a.b.shape == (3, H) and not a.b.any()


def test_alif_matches_native_layer_float64():
    torch.manual_seed(0)
    native = evsnn.ALIF(NI, H, recurrent=True, dtype=torch.float64, backend="torch")
    fc = nn.Linear(NI, H, dtype=torch.float64)
    with torch.no_grad():
        fc.weight.copy_(native.weight_ih)
        fc.bias.copy_(native.bias_ih)
    neuron = esnn.ALIF(
        beta=decay(native.tau_mem.detach()),
        rho=decay(native.tau_adapt.detach()),
        threshold=0.01,
        adapt_strength=1.8,
        linear_features=H,
        convention="spec",
    ).double()
    with torch.no_grad():
        neuron.recurrent.weight.copy_(native.weight_hh)
        neuron.recurrent.bias.copy_(native.bias_hh)
    x = (torch.rand(T, B, NI, dtype=torch.float64) * 3).requires_grad_(True)
    readout = torch.randn(H, dtype=torch.float64)
    ref, final = native(x)
    (ref_grad,) = torch.autograd.grad((ref * readout).sum() + final.v.pow(2).sum(), x)
    init = alif_initial_state(torch.zeros(B, H, dtype=torch.float64), 0.01)  # SPEC §2, passed explicitly
    spk, mem, b = init.s, init.v, init.b
    outs = []
    for t in range(T):
        spk, mem, b = neuron(fc(x[t]), spk, mem, b)
        outs.append(spk)
    assert ref.sum() > 0
    torch.testing.assert_close(torch.stack(outs), ref)
    torch.testing.assert_close(mem, final.v.reshape(mem.shape))  # h_n-style [1, B, H] or [B, H]
    torch.testing.assert_close(b, final.b.reshape(b.shape))
    # The neuron's one-node surrogate gives the gradient the layer's autograd of G gives.
    (grad,) = torch.autograd.grad((torch.stack(outs) * readout).sum() + mem.pow(2).sum(), x)
    assert grad.abs().sum() > 0
    torch.testing.assert_close(grad, ref_grad)


@pytest.mark.parametrize("surrogate", ["multi_gaussian", "triangle", "truncated"])
def test_alif_surrogate_gradient_is_the_surrogates_own(surrogate):
    """The spike of the neuron differentiates as ``Surrogate.__call__`` does (float64 autograd
    through the primitive), NaN inputs included (a zero gradient)."""
    from evsnn.surrogate import MultiGaussian, Triangle

    fn = {"multi_gaussian": MultiGaussian(), "triangle": Triangle(0.3), "truncated": MultiGaussian().truncate(0.4)}
    fn = fn[surrogate]
    neuron = esnn.ALIF(threshold=0.5, adapt_strength=0.0, spike_grad=fn).double()
    cur = torch.linspace(-1.0, 2.0, 40, dtype=torch.float64).reshape(4, 10)
    cur[0, 0] = float("nan")
    cur.requires_grad_(True)
    spk, mem = neuron(cur)
    (grad,) = torch.autograd.grad((spk * torch.arange(10.0, dtype=torch.float64)).sum(), cur)
    x = (cur.detach() - 0.5).requires_grad_(True)  # mem − threshold from a zero state
    ref = fn(x)
    (ref_grad,) = torch.autograd.grad((ref * torch.arange(10.0, dtype=torch.float64)).sum(), x)
    torch.testing.assert_close(spk, ref, equal_nan=True)
    assert grad[0, 0] == 0 and bool(grad.abs().sum() > 0)
    torch.testing.assert_close(grad, ref_grad)


@pytest.mark.parametrize(
    "kind,native_cls",
    [("egru", evsnn.EGRU), ("delta_gru", evsnn.DeltaGRU), ("delta_lstm", evsnn.DeltaLSTM)],
)
def test_weighted_families_match_native_layers(kind, native_cls):
    torch.manual_seed(0)
    # the adapter EGRU's default reset ("subtract") is the layer's "threshold"
    kw = {"theta_x": 0.02, "theta_h": 0.02} if kind != "egru" else {}
    native = native_cls(NI, H, backend="torch", **kw)
    neuron = _make_neuron(kind, NI, H, init_hidden=True)
    neuron.cell.load_state_dict(native.state_dict())
    x = torch.randn(T, B, NI)
    ref, _ = native(x)
    esnn.reset(neuron)
    out = torch.stack([neuron(x[t]) for t in range(T)])
    torch.testing.assert_close(out, ref)


def test_explicit_state_and_truncated_bptt():
    torch.manual_seed(0)
    fc = nn.Linear(NI, H)
    egru = esnn.EGRU(H, H)
    x, _ = _data(0)
    mem = egru.init_leaky()
    grads = []
    for _chunk in range(2):
        loss = 0.0
        for _ in range(3):
            spk, mem = egru(fc(x), mem)
            loss = loss + mem.pow(2).mean()
        loss.backward()
        grads.append(fc.weight.grad.clone())
        esnn.detach_hidden(egru)
        mem = egru.mem  # the detached state continues the sequence
        assert mem.grad_fn is None and mem.abs().sum() > 0 and egru.spk.grad_fn is None
    assert not torch.equal(grads[0], grads[1])


def test_float64_model_with_snntorch_surrogate_keeps_dtype():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(NI, H),
        esnn.ALIF(init_hidden=True, spike_grad=snn_surrogate.atan()),
        nn.Linear(H, C),
        esnn.ALIF(init_hidden=True, spike_grad=snn_surrogate.fast_sigmoid()),
    ).double()
    x, y = _data(0, torch.float64)
    spk = _run(net, x)
    assert spk.dtype == torch.float64
    SF.ce_rate_loss()(spk, y).backward()
    assert net[0].weight.grad.dtype == torch.float64 and net[0].weight.grad.abs().sum() > 0


_FACTORIES = {
    "straight_through_estimator": {},
    "triangular": {},
    "fast_sigmoid": {},
    "atan": {},
    "heaviside": {},
    "sigmoid": {},
    "spike_rate_escape": {},
    "SSO": {},
    "SFS": {"B": -1.0},
    "custom_surrogate": {"custom_surrogate_function": lambda inp, grad, spk: grad * 0.5},
}


@pytest.mark.parametrize("name", sorted(_FACTORIES))
def test_every_snntorch_surrogate_factory(name):
    torch.manual_seed(0)
    fn = getattr(snn_surrogate, name)(**_FACTORIES[name])
    neuron = esnn.ALIF(spike_grad=fn, threshold=0.2, adapt_strength=0.0)  # threshold B_t = b0
    cur = (torch.randn(B, H) * 0.5).requires_grad_(True)
    # The spike is computed on mem − threshold, exactly as snntorch's own ``fire``.
    spk, mem = neuron(cur)
    torch.testing.assert_close(spk, (mem - 0.2 > 0).float())
    spk.sum().backward()
    # The gradient that reaches the current is the closure's own (∂mem/∂I = 1, as snn.Leaky).
    x = (mem - 0.2).detach().requires_grad_(True)
    torch.manual_seed(0)
    fn(x).sum().backward()
    if name not in ("spike_rate_escape", "SSO"):  # these two draw random gradients
        torch.testing.assert_close(cur.grad, x.grad.float())


def test_lso_factory_is_broken_upstream():
    """snntorch 1.0.0's ``LSO`` calls the stochastic operator with the wrong arguments; the
    same error reaches users of its own neurons."""
    with pytest.raises(TypeError, match="variance"):
        snn.Leaky(beta=0.9, spike_grad=snn_surrogate.LSO())(torch.randn(2, 3))
    with pytest.raises(TypeError, match="variance"):
        esnn.ALIF(spike_grad=snn_surrogate.LSO())(torch.randn(2, 3))


def test_surrogate_disable_and_graded_spikes():
    neuron = esnn.ALIF(surrogate_disable=True, graded_spikes_factor=2.5, threshold=0.05)
    cur = torch.full((2, 4), 5.0, requires_grad=True)
    spk, mem = neuron(cur)
    b = neuron.b
    assert set(spk.unique().tolist()) <= {0.0, 2.5} and spk.max() == 2.5
    assert spk.grad_fn is None
    # The graded spike passed back is the same state as the 0/1 spike kept in the buffer.
    spk2, mem2, _ = neuron(cur, spk, mem, b)
    ref = esnn.ALIF(surrogate_disable=True, threshold=0.05)
    r1, rm1 = ref(cur)
    r2, rm2, _ = ref(cur, r1, rm1, ref.b)
    torch.testing.assert_close(mem2, rm2)
    torch.testing.assert_close(spk2, 2.5 * r2)


def test_learn_threshold_and_bad_arguments():
    neuron = esnn.ALIF(learn_threshold=True, learn_beta=True)
    names = {n for n, _ in neuron.named_parameters()}
    assert {"threshold", "beta"} <= names
    torch.testing.assert_close(neuron.beta, torch.tensor(0.95))  # snn tutorial 5's β
    torch.testing.assert_close(neuron.tau_mem, -1 / torch.log(torch.tensor(0.95)))
    egru = esnn.EGRU(NI, H, learn_threshold=False)
    assert not egru.cell.log_threshold.requires_grad
    with pytest.raises(ValueError, match=r"reset_mechanism must be one of \['subtract', 'zero', 'none'\], got 'hard'"):
        esnn.ALIF(reset_mechanism="hard")
    with pytest.raises(ValueError, match="convention='spec'.*must be 'subtract', got 'zero'"):
        esnn.ALIF(reset_mechanism="zero", convention="spec")
    with pytest.raises(ValueError, match=r"convention='spec'.*exp\(-1\)"):
        esnn.ALIF(beta=0.2, convention="spec")
    with pytest.raises(ValueError, match="beta must be finite"):
        esnn.ALIF(beta=float("nan"))
    with pytest.raises(ValueError, match="reset_mechanism"):
        esnn.EGRU(NI, H, reset_mechanism="none")
    with pytest.raises(TypeError):
        esnn.DeltaGRU(NI, H, spike_grad=snn_surrogate.atan())
    with pytest.raises(ValueError, match=r"\[batch, 5\]"):
        esnn.EGRU(NI, H)(torch.randn(T, B, NI))
    with pytest.raises(TypeError, match="nn.Module"):
        esnn.reset([1, 2])
    e = esnn.EGRU(NI, H, reset_mechanism="subtract")
    assert e.cell.reset == "threshold" and e.reset_mechanism == "subtract"


def test_mixed_with_snntorch_neurons_utils_and_output_monitor():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(NI, H),
        snn.Leaky(beta=0.9, init_hidden=True),
        esnn.EGRU(H, H, init_hidden=True),
        nn.Linear(H, C),
        esnn.ALIF(init_hidden=True),
    )
    monitor = probe.OutputMonitor(net, instance=(esnn.EGRU, esnn.ALIF, snn.Leaky))
    x, y = _data(0)
    spk = _run(net, x, steps=4)
    assert monitor.monitored_layers == ["1", "2", "4"]
    assert len(monitor["2"]) == 4 and monitor["2"][0].shape == (B, H)
    torch.testing.assert_close(torch.stack(monitor["4"]), spk)
    SF.ce_rate_loss()(spk, y).backward()
    esnn.reset(net)
    assert net[1].mem.grad_fn is None and net[2].mem.numel() == 0
    snn_utils.reset(net)  # snntorch's own utility still runs on a mixed network
    # snntorch.utils' layer-count helper counts our neurons' outputs as snn.Leaky's: (spk, mem).
    assert snn_utils._final_layer_check(net) == 2


def test_torch_compile_matches_eager():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(NI, H), esnn.ALIF(init_hidden=True), nn.Linear(H, H), esnn.EGRU(H, C, init_hidden=True)
    )
    x, _ = _data(0)
    eager = _run(net, x, steps=3)
    compiled = torch.compile(net, backend="aot_eager")
    esnn.reset(net)
    out = torch.stack([compiled(x) for _ in range(3)])
    torch.testing.assert_close(out, eager)


def test_spikeplot_accepts_outputs(tmp_path):
    pytest.importorskip("pandas")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from snntorch import spikeplot

    torch.manual_seed(0)
    net = _tutorial_net("alif")
    spk = _run(net, _data(0)[0]).detach()
    fig, ax = plt.subplots()
    spikeplot.raster(spk[:, 0], ax, s=2)
    spikeplot.spike_count(spk[:, 0], fig, ax, labels=["a", "b", "c"], num_steps=T, interpolate=1)
    fig.savefig(tmp_path / "raster.png")
    plt.close(fig)
    assert (tmp_path / "raster.png").stat().st_size > 0


# --- the snn.Leaky drop-in: call forms, snntorch's own reset/detach helpers, conventions ---------


# snn.Leaky keeps β and its threshold as float32 tensors whatever the input's dtype, and its
# spikes come back float32: comparisons with it are at float32 precision. Both libraries compute
# the same products in the same order, so the values agree to a few roundings of float32 per step;
# 64 float32 ulps bounds what 12 steps of such roundings, carried through the backward pass, add up to.
_F32_EPS = torch.finfo(torch.float32).eps
_LEAKY_TOL = {"rtol": 64 * _F32_EPS, "atol": 64 * _F32_EPS}


def _leaky_pair(beta=0.9, **kw):
    """snn.Leaky and the ALIF that computes it (no adaptation, the same surrogate)."""
    leaky = snn.Leaky(beta=beta, **kw)
    alif = esnn.ALIF(beta=beta, adapt_strength=0.0, spike_grad=snn_surrogate.atan(), **kw)
    return leaky, alif


def _run_leaky_form(neuron, cur, readout):
    """A tutorial-style loop in the snn.Leaky form; returns spikes, last mem, d loss / d cur."""
    mem = neuron.init_leaky()
    loss = 0.0
    spikes = []
    for t in range(cur.shape[0]):
        spk, mem = neuron(cur[t], mem)
        spikes.append(spk.to(cur.dtype))
        loss = loss + (spk * readout).sum() + 0.1 * mem.pow(2).sum()
    params = [p for p in (neuron.beta, neuron.threshold) if isinstance(p, nn.Parameter)]
    grads = torch.autograd.grad(loss, [cur, *params])
    return torch.stack(spikes), mem, grads


def test_alif_in_the_leaky_form_is_snn_leaky_values_and_gradients():
    torch.manual_seed(0)
    leaky, alif = _leaky_pair()
    cur = (1.5 * torch.rand(12, B, H, dtype=torch.float64)).requires_grad_(True)
    readout = torch.randn(H, dtype=torch.float64)
    spikes, mem, grads = _run_leaky_form(alif.double(), cur, readout)
    ref_spikes, ref_mem, ref_grads = _run_leaky_form(leaky, cur, readout)
    assert 0 < spikes.mean() < 0.9
    torch.testing.assert_close(spikes, ref_spikes)
    torch.testing.assert_close(mem, ref_mem, **_LEAKY_TOL)
    torch.testing.assert_close(grads[0], ref_grads[0], **_LEAKY_TOL)


_BETAS = {
    "scalar": lambda: 0.9,
    "one": lambda: 1.0,
    "small": lambda: 0.2,  # below e^-1: a time constant under one step
    "per_neuron_rand": lambda: torch.rand(H),  # snntorch's quickstart: beta=torch.rand(n)
    "above_one": lambda: 1.5,  # snn.Leaky clamps β to [0, 1] in its forward pass
    "negative": lambda: torch.linspace(-0.5, 0.99, H),
}


@pytest.mark.parametrize("reset_mechanism", ["subtract", "zero", "none"])
@pytest.mark.parametrize("beta_kind", sorted(_BETAS))
@pytest.mark.parametrize("learn", [False, True])
def test_alif_with_any_beta_and_reset_is_snn_leaky(beta_kind, reset_mechanism, learn):
    """β anywhere snntorch accepts it, per neuron or not, learnable or not, every reset of
    snn.Leaky: the same spikes, membranes and gradients (inputs, β and threshold), float32 as
    snntorch's users run it."""
    torch.manual_seed(0)
    beta = _BETAS[beta_kind]()
    kw = {"reset_mechanism": reset_mechanism, "learn_beta": learn, "learn_threshold": learn}
    leaky, alif = _leaky_pair(beta, **kw)
    cur = (1.5 * torch.rand(12, B, H)).requires_grad_(True)
    readout = torch.randn(H)
    spikes, mem, grads = _run_leaky_form(alif, cur, readout)
    ref_spikes, ref_mem, ref_grads = _run_leaky_form(leaky, cur, readout)
    assert 0 < spikes.mean() < 1
    torch.testing.assert_close(spikes, ref_spikes)
    torch.testing.assert_close(mem, ref_mem, **_LEAKY_TOL)
    assert len(grads) == len(ref_grads) == (3 if learn else 1)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, **_LEAKY_TOL)
    if learn:
        assert {n for n, _ in alif.named_parameters()} == {n for n, _ in leaky.named_parameters()}
        # The same names as snn.Leaky's: its trained β and threshold load; the adaptation is ALIF's own.
        missing, unexpected = alif.load_state_dict(leaky.state_dict(), strict=False)
        assert not unexpected and set(missing) == {"tau_adapt", "adapt_strength"}


def test_the_two_alif_conventions_are_one_neuron_in_two_units():
    """SPEC §2 integrates (1−β)·I; snntorch's convention integrates I: the same spikes with
    thresholds and membrane scaled by 1/(1−β), from the same state."""
    torch.manual_seed(0)
    beta, thr, strength = 0.9, 0.4, 1.2
    snt = esnn.ALIF(beta=beta, threshold=thr, adapt_strength=strength, detach_reset=False).double()
    spec = esnn.ALIF(beta=beta, threshold=thr * (1 - beta), adapt_strength=strength * (1 - beta), convention="spec")
    spec = spec.double()
    k = 1 - float(snt.beta)  # β as stored (τ_m = −1/ln β in float32), the same in both neurons
    spec.threshold.fill_(thr * k)
    spec.adapt_strength.fill_(strength * k)
    cur = 0.3 + 0.4 * torch.rand(30, B, H, dtype=torch.float64)
    zeros = torch.zeros(B, H, dtype=torch.float64)
    a = b = (zeros, zeros, zeros)
    total = 0.0
    for t in range(cur.shape[0]):
        a = snt(cur[t], *a)
        b = spec(cur[t], *b)
        torch.testing.assert_close(a[0], b[0])
        torch.testing.assert_close(a[1] * k, b[1])
        torch.testing.assert_close(a[2], b[2])
        total += float(a[0].sum())
    assert total > 0 and bool((a[2] > 0).any())  # spikes and adaptation happened


def test_snntorch_utils_reset_resets_the_whole_state_and_batches_train():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(NI, H),
        esnn.ALIF(init_hidden=True),
        nn.Linear(H, H),
        # thresholds around 0.3: events large enough to drive the readout past its threshold
        esnn.EGRU(H, H, init_hidden=True, threshold=0.3, threshold_init="beta"),
        nn.Linear(H, C),
        esnn.ALIF(init_hidden=True, output=True),
    )
    fresh = copy.deepcopy(net)
    xs = [3 * _data(0)[0], 3 * _data(1)[0]]
    ys = [_data(0)[1], _data(1)[1]]
    for x, y in zip(xs, ys):  # without snntorch's reset the second backward would hit a freed graph
        snn_utils.reset(net)
        spk = torch.stack([net(x)[0] for _ in range(5)])
        SF.ce_rate_loss()(spk, y).backward()
    assert bool(net[1].b.any()) and net[1].v.grad_fn is not None and net[3].spk.grad_fn is not None
    snn_utils.reset(net)
    for name in ("v", "b", "spk"):
        assert getattr(net[1], name).grad_fn is None
    assert net[1].b.numel() == 0 and net[3].spk.numel() == 0
    # After the reset the network answers the second batch as a never-used copy does.
    with torch.no_grad():
        got = torch.stack([net(xs[1])[0] for _ in range(5)])
        want = torch.stack([fresh(xs[1])[0] for _ in range(5)])
    assert bool(got.any())
    torch.testing.assert_close(got, want)


def test_snntorch_tbptt_detaches_the_whole_state_as_for_snn_leaky():
    """snntorch.backprop.TBPTT resets with utils.reset and cuts the graph every K steps with
    Leaky.detach_hidden (an in-place detach of mem): on the non-adaptive ALIF it trains exactly
    as on snn.Leaky; on an adaptive one with attached spike history it runs (b and spk are cut
    with mem)."""
    from snntorch import backprop

    x = 3 * torch.rand(32, NI)
    y = torch.arange(32) % C

    def run(make):
        torch.manual_seed(1)
        net = nn.Sequential(
            nn.Linear(NI, H), make(init_hidden=True), nn.Linear(H, C), make(init_hidden=True, output=True)
        )
        opt = torch.optim.SGD(net.parameters(), lr=0.5)
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
        loss = backprop.TBPTT(net, loader, opt, SF.ce_rate_loss(), num_steps=6, time_var=False, K=2)
        return loss, net[0].weight.detach()

    def leaky(**kw):
        return snn.Leaky(beta=0.9, **kw)

    def alif(**kw):
        return esnn.ALIF(beta=0.9, adapt_strength=0.0, spike_grad=snn_surrogate.atan(), **kw)

    loss_ref, w_ref = run(leaky)
    loss, w = run(alif)
    torch.testing.assert_close(loss, loss_ref)
    torch.testing.assert_close(w, w_ref)
    loss, _ = run(lambda **kw: esnn.ALIF(beta=0.9, detach_reset=False, **kw))  # spk and b carry graphs
    assert math.isfinite(loss.item())


def test_leaky_detach_hidden_keeps_values_and_cuts_every_part_of_the_state():
    torch.manual_seed(0)
    fc = nn.Linear(NI, H)
    alif = esnn.ALIF(beta=0.9, init_hidden=True, detach_reset=False)  # spk and b carry graphs
    twin = copy.deepcopy(alif)
    x = 3 * _data(0)[0]
    first = torch.stack([alif(fc(x)) for _ in range(3)])
    first.sum().backward()  # frees the first chunk's graph; the state still points into it
    for _ in range(3):
        twin(fc(x))
    snn.Leaky.detach_hidden()  # snntorch's class-level helper: mem.detach_() on every Leaky
    out = torch.stack([alif(fc(x)) for _ in range(3)])
    out.sum().backward()  # would raise if b or spk still led into the first chunk's graph
    esnn.detach_hidden(twin)
    ref = torch.stack([twin(fc(x)) for _ in range(3)])
    torch.testing.assert_close(out, ref)


def test_snntorch_utils_reset_reaches_deep_copies_of_evsnn_neurons():
    net = nn.Sequential(nn.Linear(NI, H), esnn.ALIF(init_hidden=True), esnn.EGRU(H, H, init_hidden=True))
    clone = copy.deepcopy(net)
    clone(3 * _data(0)[0])
    assert clone[1].b.numel() > 0 and clone[2].mem.numel() > 0
    snn_utils.reset(clone)  # a deep copy of snn.Leaky is missed here (see the test above)
    assert not clone[1].mem.any() and clone[1].b.numel() == 0 and clone[2].spk.numel() == 0


def test_failed_construction_leaves_no_half_built_neuron_for_snntorch_helpers():
    before = len(snn.SpikingNeuron.instances)
    with pytest.raises(ValueError, match=r"exp\(-1\)"):
        esnn.ALIF(rho=0.2)
    with pytest.raises(ValueError, match="reset_mechanism"):
        esnn.EGRU(NI, H, reset_mechanism="none")
    assert len(snn.SpikingNeuron.instances) == before
    snn.Leaky.reset_hidden()  # walks every registered neuron
    snn.Leaky.detach_hidden()


def test_leaky_form_binds_mem_and_full_form_binds_every_state():
    torch.manual_seed(0)
    alif = esnn.ALIF(beta=0.8, threshold=1.0, adapt_strength=0.5)
    cur = torch.full((2, 3), 0.25)
    # The snn.Leaky form: the one state argument is the membrane (hand computed, no spike yet).
    spk, mem = alif(cur, torch.full((2, 3), 0.5))
    torch.testing.assert_close(mem, torch.full((2, 3), 0.8 * 0.5 + 0.25))
    spk, mem = alif(cur, mem=mem)
    torch.testing.assert_close(mem, torch.full((2, 3), 0.8 * 0.65 + 0.25))
    # A membrane above threshold: the spike is reset one step later by B = threshold + 0.5·b.
    spk, mem = alif(cur, torch.full((2, 3), 1.0))
    assert spk.all() and not alif.b.any()
    spk, mem = alif(cur, mem)
    b = 1 - alif.rho  # b = ρ·0 + (1 − ρ)·s
    torch.testing.assert_close(alif.b, b.expand(2, 3))
    torch.testing.assert_close(mem, 0.8 * (0.8 + 0.25) + 0.25 - (1.0 + 0.5 * b).expand(2, 3))
    # The full form takes and returns every state, positionally or by name.
    s0, m0, b0 = alif.spk, alif.v, alif.b
    out1 = alif(cur, s0, m0, b0)
    out2 = alif(cur, spk=s0, mem=m0, b=b0)
    assert len(out1) == len(out2) == 3
    for p, q in zip(out1, out2):
        torch.testing.assert_close(p, q)
    egru = esnn.EGRU(NI, H)
    x = torch.randn(B, NI)
    y, c = egru(x, egru.init_leaky())
    assert torch.equal(c, egru.mem) and torch.equal(y, egru.spk) and egru.y is egru.spk
    assert len(egru(x, y, c)) == 2


def test_ambiguous_or_impossible_calls_name_the_right_forms():
    alif = esnn.ALIF()
    cur = torch.randn(B, H)
    forms = r"spk, mem = alif\(cur, mem\).*spk, mem, b = alif\(cur, spk, mem, b\)"
    with pytest.raises(TypeError, match="2 state arguments. ALIF takes `" + forms):
        alif(cur, cur, cur)
    with pytest.raises(TypeError, match=r"\['mem', 'spk'\]. ALIF takes `" + forms):
        alif(cur, spk=cur, mem=cur)
    with pytest.raises(TypeError, match="positionally or by keyword, not both"):
        alif(cur, cur, b=cur)
    egru = esnn.EGRU(NI, H)
    with pytest.raises(TypeError, match=r"3 state arguments. EGRU takes `spk, mem = egru\(x, mem\)`"):
        egru(torch.randn(B, NI), cur, cur, cur)
    with pytest.raises(TypeError, match=r"init_hidden=True.*\.mem"):
        esnn.ALIF(init_hidden=True)(cur, cur)
    with pytest.raises(TypeError, match="ALIF.mem must be a tensor"):
        alif.mem = [0.0]
    with pytest.raises(ValueError, match=r"convention must be one of \['snntorch', 'spec'\]"):
        esnn.ALIF(convention="norse")
    with pytest.raises(TypeError, match="beta"):
        esnn.EGRU(NI, H, beta=0.9)


def test_assigning_mem_resets_or_detaches_as_for_snn_leaky():
    torch.manual_seed(0)
    fc = nn.Linear(NI, H)
    alif = esnn.ALIF(beta=0.9, init_hidden=True, detach_reset=False)  # so that b carries a graph
    x = 3 * _data(0)[0]
    for _ in range(4):
        alif(fc(x))
    assert alif.b.any() and alif.b.grad_fn is not None
    values = (alif.v.detach().clone(), alif.b.detach().clone())
    alif.mem = alif.mem.detach()  # a detached view of its own membrane: truncated BPTT
    assert all(getattr(alif, n).grad_fn is None for n in ("v", "b", "spk"))
    torch.testing.assert_close(alif.v, values[0])
    torch.testing.assert_close(alif.b, values[1])
    alif.mem = torch.full_like(alif.mem, 0.5)  # a membrane it did not produce: a new sequence
    assert alif.b.numel() == 0 and not alif.spk.any()  # below the threshold: no reset pending
    spk = alif(torch.zeros(B, H))
    assert not spk.any() and not alif.b.any()
    torch.testing.assert_close(alif.mem, torch.full((B, H), 0.45))


def test_signatures_and_args_sections_show_every_argument():
    import inspect

    for cls in (esnn.ALIF, esnn.EGRU, esnn.DeltaGRU, esnn.DeltaLSTM):
        params = inspect.signature(cls).parameters
        assert all(p.kind is not inspect.Parameter.VAR_KEYWORD for p in params.values()), cls
        doc = inspect.getdoc(cls)
        args = doc[doc.index("Args:") :]
        missing = [name for name in params if f"{name}:" not in args]
        assert not missing, (cls.__name__, missing)
    assert issubclass(esnn.ALIF, snn.Leaky) and issubclass(esnn.EGRU, snn.Leaky)


def test_egru_as_a_bfloat16_module_matches_float32_at_bfloat16_precision():
    """``.to(torch.bfloat16)`` on a network with the EGRU neuron: it runs, trains, keeps its
    internal state float32 (SPEC §6) and computes what a float32 EGRU with the same (rounded)
    weights computes, to bfloat16 precision."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(NI, H), esnn.EGRU(H, H, init_hidden=True, threshold_init="constant"))
    ref = copy.deepcopy(net).to(torch.bfloat16).float()  # float32, with the bfloat16-rounded weights
    net = net.to(torch.bfloat16)
    x = torch.randn(B, NI).to(torch.bfloat16)
    outs = [net(x) for _ in range(3)]
    assert all(o.dtype == torch.bfloat16 for o in outs) and net[1].c.dtype == torch.float32
    torch.stack(outs).float().sum().backward()
    assert net[0].weight.grad.dtype == torch.bfloat16 and bool(net[0].weight.grad.abs().sum() > 0)
    with torch.no_grad():
        want = [ref(x.float()) for _ in range(3)]
    # One bfloat16 rounding of each product (eps 2^-8) per step, through three steps of gates.
    bf16 = torch.finfo(torch.bfloat16).eps
    torch.testing.assert_close(net[1].c, ref[1].c, rtol=8 * bf16, atol=8 * bf16)
    for got, exp in zip(outs, want):
        torch.testing.assert_close(got.float(), exp, rtol=8 * bf16, atol=8 * bf16)


@pytest.mark.parametrize("kind,torch_cell", [("delta_gru", nn.GRUCell), ("delta_lstm", nn.LSTMCell)])
def test_delta_neurons_return_the_state_they_take(kind, torch_cell):
    """``h, x_hat, h_hat, m = dgru(x, h, x_hat, h_hat, m)`` (and DeltaLSTM's five) as the
    docstrings write it: the call unpacks into the names it takes; at threshold 0 ``h`` (and
    ``c``) are torch's GRUCell/LSTMCell."""
    torch.manual_seed(0)
    cls = esnn.DeltaGRU if kind == "delta_gru" else esnn.DeltaLSTM
    neuron = cls(NI, H, threshold=0.0)
    ref = torch_cell(NI, H)
    ref.load_state_dict(neuron.cell.state_dict(), strict=False)
    x = torch.randn(T, B, NI)
    state = neuron.reset_mem()
    assert len(state) == len(neuron._state_names)
    ref_state = None
    for t in range(T):
        state = neuron(x[t], *state)
        assert len(state) == len(neuron._state_names)
        ref_state = ref(x[t], ref_state)
        if kind == "delta_gru":
            torch.testing.assert_close(state[0], ref_state)
        else:
            torch.testing.assert_close(state[0], ref_state[0])
            torch.testing.assert_close(state[1], ref_state[1])
    out = cls(NI, H, init_hidden=True, output=True)(x[0])
    assert len(out) == len(neuron._state_names)


def _run_rleaky_form(neuron, cur, readout):
    """snntorch's RLeaky loop (``init_rleaky``, ``spk, mem = lif(cur, spk, mem)``); returns the
    spikes, last mem and the gradients of a loss on both w.r.t. the current and the parameters."""
    spk, mem = neuron.init_rleaky()
    loss = 0.0
    spikes = []
    for t in range(cur.shape[0]):
        spk, mem = neuron(cur[t], spk, mem)
        spikes.append(spk)
        loss = loss + (spk * readout).sum() + 0.1 * mem.pow(2).sum()
    names, params = zip(*neuron.named_parameters()) if list(neuron.parameters()) else ((), ())
    grads = torch.autograd.grad(loss, [cur, *params])
    return torch.stack(spikes), mem, dict(zip(("input", *names), grads))


@pytest.mark.parametrize("reset_mechanism", ["subtract", "zero", "none"])
@pytest.mark.parametrize("recurrence", ["linear", "one_to_one"])
def test_ralif_is_snn_rleaky_values_and_gradients(recurrence, reset_mechanism):
    """snn.RLeaky's code with the class swapped: RALIF without adaptation computes snn.RLeaky,
    spikes, membranes and gradients (current, β, threshold and recurrent weights), float32."""
    torch.manual_seed(0)
    beta = torch.rand(H)  # per neuron, some below e^-1
    if recurrence == "linear":
        kw = {"linear_features": H}
    else:
        kw = {"all_to_all": False, "V": 0.5 * torch.randn(H)}
    kw.update(reset_mechanism=reset_mechanism, learn_beta=True, learn_threshold=True)
    rleaky = snn.RLeaky(beta=beta, **kw)
    ralif = esnn.RALIF(beta=beta, adapt_strength=0.0, spike_grad=snn_surrogate.atan(), **kw)
    missing, unexpected = ralif.load_state_dict(rleaky.state_dict(), strict=False)
    assert not unexpected and set(missing) == {"tau_adapt", "adapt_strength"}  # snn.RLeaky's weights load
    cur = (1.5 * torch.rand(12, B, H)).requires_grad_(True)
    readout = torch.randn(H)
    spikes, mem, grads = _run_rleaky_form(ralif, cur, readout)
    ref_spikes, ref_mem, ref_grads = _run_rleaky_form(rleaky, cur, readout)
    assert 0 < spikes.mean() < 1
    torch.testing.assert_close(spikes, ref_spikes)
    torch.testing.assert_close(mem, ref_mem, **_LEAKY_TOL)
    assert grads.keys() == ref_grads.keys() and len(grads) == (4 if recurrence == "one_to_one" else 5)
    for name, got in grads.items():
        torch.testing.assert_close(got, ref_grads[name], **_LEAKY_TOL, msg=lambda m, n=name: f"{n}: {m}")


def test_ralif_conv2d_recurrence_and_bad_arguments():
    torch.manual_seed(0)
    rleaky = snn.RLeaky(beta=0.8, conv2d_channels=3, kernel_size=3)
    ralif = esnn.RALIF(beta=0.8, conv2d_channels=3, kernel_size=3, adapt_strength=0.0, spike_grad=snn_surrogate.atan())
    ralif.recurrent.load_state_dict(rleaky.recurrent.state_dict())
    cur = 1.5 * torch.rand(6, 2, 3, 5, 5)
    spikes, mem, _ = _run_rleaky_form(ralif, cur.requires_grad_(True), torch.ones(5))
    ref_spikes, ref_mem, _ = _run_rleaky_form(rleaky, cur, torch.ones(5))
    assert 0 < spikes.mean() < 1
    torch.testing.assert_close(spikes, ref_spikes)
    torch.testing.assert_close(mem, ref_mem, **_LEAKY_TOL)
    with pytest.raises(TypeError, match="needs linear_features"):
        esnn.RALIF(beta=0.9)
    with pytest.raises(TypeError, match="all_to_all=False.*must be None"):
        esnn.RALIF(beta=0.9, all_to_all=False, linear_features=H)
    with pytest.raises(TypeError, match="both conv2d_channels and kernel_size"):
        esnn.RALIF(beta=0.9, conv2d_channels=3)
    with pytest.raises(TypeError, match=r"got 1 state arguments. RALIF takes `spk, mem = lif\(cur, spk, mem\)`"):
        esnn.RALIF(beta=0.9, linear_features=H)(torch.randn(B, H), torch.zeros(B, H))


@pytest.mark.parametrize("reset_mechanism", ["subtract", "zero"])
def test_a_membrane_passed_above_threshold_is_reset_as_snn_leaky_resets_it(reset_mechanism):
    """snn.Leaky computes its reset from the membrane it is given (``H(mem − threshold)``): a
    membrane from elsewhere, above the threshold, is reset at the next step."""
    torch.manual_seed(0)
    leaky, alif = _leaky_pair(0.8, reset_mechanism=reset_mechanism)
    cur = torch.rand(B, H)
    given = 2 * torch.rand(B, H)  # about half above the threshold 1.0
    for neuron in (leaky, alif):
        neuron.init_leaky()
    spk, mem = alif(cur, given.clone())
    ref_spk, ref_mem = leaky(cur, given.clone())
    assert bool((given > 1).any()) and bool((given <= 1).any())
    torch.testing.assert_close(spk, ref_spk)
    torch.testing.assert_close(mem, ref_mem, **_LEAKY_TOL)
