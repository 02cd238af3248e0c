"""The SAE building blocks: sparse autograd, decoder-norm upkeep, JumpReLU estimators."""

import pytest
import torch

from husai_core.sae import SAEConfig, build_sae, stack_saes
from husai_core.sae.sparse_ops import SparsePattern, sparse_decode, sparse_encode



def _params(S, d_in, d_sae, seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).requires_grad_()  # noqa: E731
    return mk(S, d_sae, d_in), mk(S, d_sae), mk(S, d_in), mk(S, d_sae, d_in), torch.randn(S, 9, d_in, generator=g, dtype=torch.float64)


def test_sparse_encode_decode_match_dense_values_and_grads():
    S, d_in, d_sae, k = 2, 6, 20, 4
    W, be, bi, Wd, x = _params(S, d_in, d_sae)
    B = x.shape[1]
    g_out = torch.randn(S, B, d_in, dtype=torch.float64)

    def dense():
        pre = torch.baddbmm(be[:, None], x - bi[:, None], W.transpose(1, 2))
        v, i = pre.topk(k, dim=-1)
        z = torch.zeros_like(pre).scatter(-1, i, v.relu())
        return torch.bmm(z, Wd)

    def sparse():
        xc = (x - bi[:, None]).detach()
        with torch.no_grad():
            pre = torch.baddbmm(be[:, None], xc, W.transpose(1, 2))
            v, i = pre.topk(k, dim=-1)
        pat = SparsePattern((i + torch.arange(S)[:, None, None] * d_sae).reshape(S * B, k), S * d_sae)
        vals = sparse_encode(v.reshape(S * B, k), xc.reshape(S * B, d_in), W, be, bi, pat).relu()
        return sparse_decode(vals, Wd, pat).view(S, B, d_in)

    results = []
    for fn in (dense, sparse):
        for t in (W, be, bi, Wd):
            t.grad = None
        out = fn()
        (out * g_out).sum().backward()
        results.append([out.detach()] + [t.grad.clone() for t in (W, be, bi, Wd)])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_gathered_dot_kernels_agree():
    g = torch.Generator().manual_seed(1)
    table, dense = torch.randn(10, 4, generator=g), torch.randn(5, 4, generator=g)
    idx = torch.randint(0, 10, (5, 3), generator=g)
    want = (table[idx] * dense[:, None, :]).sum(-1)
    pat = SparsePattern(idx, 10)
    for fn in (pat.gathered_dot, pat._dot_sampled, pat._dot_bags, pat._dot_chunked):
        torch.testing.assert_close(fn(dense, table), want)


@pytest.mark.parametrize("arch", ["topk", "matryoshka"])
def test_topk_sparse_training_step_equals_dense_reference(arch):
    base = SAEConfig(architecture=arch, d_in=8, d_sae=32, k=3, aux_k=5, matryoshka_prefixes=(4, 12))
    x = torch.randn(40, 8, generator=torch.Generator().manual_seed(2))
    dead = torch.zeros(32, dtype=torch.bool)
    dead[::3] = True  # exercise the AuxK path too
    grads, outs = [], []
    for impl in ("sparse", "dense"):
        sae = build_sae(base.replace(decode_impl=impl), seed=3).double()
        sae.init_biases_from_data(x.double())
        out = sae(x.double(), dead_mask=dead)
        out.loss.backward()
        assert out.aux > 0
        outs.append(out)
        grads.append({n: p.grad.clone() for n, p in sae.named_parameters()})
    for field in ("x_hat", "latents", "loss", "mse", "aux", "matryoshka", "l0", "fired"):
        torch.testing.assert_close(getattr(outs[0], field).double(), getattr(outs[1], field).double())
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], msg=name)


def test_topk_latents_nonnegative_and_k_sparse():
    sae = build_sae(SAEConfig(architecture="topk", d_in=8, d_sae=32, k=3), seed=0)
    z = sae.encode(torch.randn(50, 8))
    assert (z >= 0).all() and ((z != 0).sum(-1) <= 3).all()
    out = sae(torch.randn(50, 8))
    assert (out.latents >= 0).all()


def test_remove_parallel_grad_keeps_only_orthogonal_part():
    sae = build_sae(SAEConfig(architecture="relu", d_in=6, d_sae=10), seed=0)
    g = torch.randn_like(sae.dec_w)
    sae.dec_w.grad = g.clone()
    sae.remove_parallel_grad()
    w = sae.dec_w.detach()
    new = sae.dec_w.grad
    assert torch.allclose((new * w).sum(-1), torch.zeros(1, 10), atol=1e-6)  # no parallel part left
    parallel = (g * w).sum(-1, keepdim=True) * w
    torch.testing.assert_close(new, g - parallel)  # the orthogonal part is untouched


def test_jumprelu_l0_penalty_has_gradient_to_thresholds():
    cfg = SAEConfig(architecture="jumprelu", d_in=8, d_sae=16, bandwidth=0.5, jumprelu_init_threshold=0.3)
    sae = build_sae(cfg, seed=0)
    x = torch.randn(256, 8, generator=torch.Generator().manual_seed(0))
    out = sae(x)
    out.l0.backward()  # the penalty alone
    g = sae.log_threshold.grad
    assert g is not None and g.abs().sum() > 0
    assert (g <= 0).all()  # raising a threshold can only lower L0
    # compare with the rectangle-kernel estimator written out by hand
    with torch.no_grad():
        pre = sae.pre_activations(x.view(1, -1, 8))
        theta = sae.log_threshold.exp()
        inside = ((pre - theta[:, None]).abs() < cfg.bandwidth / 2).to(pre.dtype)
        want = -(inside.sum(1) / cfg.bandwidth) / x.shape[0] * theta
    torch.testing.assert_close(g, want)
    assert float(out.l0.detach()) == pytest.approx(float((sae.encode(x) != 0).sum(-1).float().mean()))


def test_jumprelu_threshold_gets_gradient_from_reconstruction_too():
    sae = build_sae(SAEConfig(architecture="jumprelu", d_in=8, d_sae=16, bandwidth=0.5,
                              jumprelu_init_threshold=0.3), seed=0)
    out = sae(torch.randn(256, 8, generator=torch.Generator().manual_seed(0)))
    out.mse.backward()
    assert sae.log_threshold.grad.abs().sum() > 0


def test_stacked_forward_equals_individual_forwards():
    cfg = SAEConfig(architecture="topk", d_in=8, d_sae=32, k=3)
    singles = [build_sae(cfg, s) for s in (0, 1)]
    stack = stack_saes(singles)
    x = torch.randn(2, 20, 8)
    out = stack(x)
    for s, single in enumerate(singles):
        o = single(x[s])
        torch.testing.assert_close(out.x_hat[s], o.x_hat)
        torch.testing.assert_close(out.loss[s], o.loss)
    for s, single in enumerate(stack.unstack()):
        torch.testing.assert_close(single.W_dec, singles[s].W_dec)


@pytest.mark.parametrize("shape, k", [((64, 1024), 32), ((3, 40, 256), 8), ((10, 100), 7), ((5, 16), 3), ((2, 64), 64)])
def test_topk_last_is_exact(shape, k):
    from husai_core.sae.topk_kernel import topk_last

    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    v, i = topk_last(x, k)
    assert v.shape == (*shape[:-1], k)
    torch.testing.assert_close(x.gather(-1, i), v)  # indices point at the values
    torch.testing.assert_close(v.sort(-1).values, x.topk(k).values.sort(-1).values)
    ties = torch.zeros(4, 256)
    ties[:, 5] = 1.0
    v, i = topk_last(ties, 8)
    assert (v.max(-1).values == 1).all() and (ties.gather(-1, i) == v).all()
