"""Flatness measures: PAC-Bayes noise radius σ and the PAC-Bayes bound terms built on it
(ε-sharpness is in :mod:`implicitreg.measures.sharpness`).

Every function takes a plain ``nn.Module`` (→ 0-d tensor) or a population (→ [P]) and the
training data ``data = (x, y)``: x [N, ...] inputs shared by every member, y [N] integer labels
(or [P, N], each member's own labels). Any object with ``x_train`` / ``y_train`` works too.
All members are perturbed at once: the perturbed copies are stacked along the member axis and
evaluated with ``vmap(functional_call(template, ...))``.

References:
    Jiang, Neyshabur, Mobahi, Krishnan, Bengio (2020). Fantastic generalization measures and
    where to find them. ICLR. (Appendix C.3: eqs. for pacbayes.{init,orig,flatness} and the
    magnitude-aware pacbayes.mag.{init,orig,flatness}.)
    Dziugaite, Drouin, Neal, et al. (2020). In search of robust measures of generalization. NeurIPS.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.func import functional_call, vmap

from implicitreg.measures.core import Estimate, Stacked, register, require_eval, stacked, unpack_data
from implicitreg.seeding import stream_seed

Params = dict[str, torch.Tensor]

#: ε of the magnitude-aware perturbation u_i ~ N(0, σ'²θ_i² + ε²) (Jiang et al. 2020, App. C.3, ε = 1e-3):
#: it keeps zero weights perturbed and the bound's logarithms finite.
MAG_EPSILON = 1e-3
#: σ beyond which the search stops expanding and reports σ = inf (the accuracy never dropped enough).
SIGMA_MAX = 1e4

#: Perturbed draws generated per random block. The block, not the population size, fixes the
#: random stream, so a member's draws are the same alone or inside any population.
_DRAW_BLOCK = 8


@dataclass(frozen=True)
class FlatnessResult:
    """Outcome of the σ search (each field 0-d for a plain module, [P] for a population).

    Attributes:
        sigma: the largest σ found whose mean accuracy drop is ≤ the target (the lower end of
            the final bracket); 0 where no feasible σ was found; inf where even σ = ``SIGMA_MAX``
            keeps the drop within the target (a model near chance accuracy).
        upper: the upper end of the final bracket (a σ whose drop exceeded the target); inf where
            none was found.
        accuracy_drop: the Monte-Carlo mean accuracy drop at ``sigma``.
        base_accuracy: train accuracy of the unperturbed parameters.
        n_iter: number of accuracy evaluations (bracketing and bisection) spent on the member.
        converged: True where ``upper / sigma − 1 ≤ tol`` was reached within ``max_iter``, or
            where σ is unbounded.
    """

    sigma: torch.Tensor
    upper: torch.Tensor
    accuracy_drop: torch.Tensor
    base_accuracy: torch.Tensor
    n_iter: torch.Tensor
    converged: torch.Tensor


# ---------------------------------------------------------------------------------------------
# shared helpers


def train_data(data: Any, s: Stacked) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` or an object with ``x_train``/``y_train`` → x on the parameters' device and
    dtype, y [P, N] (a shared [N] is expanded)."""
    x, y = unpack_data(data)
    like = next(iter(s.params.values()))
    x = torch.as_tensor(x).to(device=like.device, dtype=like.dtype)
    y = torch.as_tensor(y).to(device=like.device)
    n = x.shape[0]
    if y.dim() == 1:
        y = y.unsqueeze(0).expand(s.size, -1)
    if y.dim() != 2 or y.shape != (s.size, n):
        raise ValueError(f"data: labels must be [N] = [{n}] or [P, N] = [{s.size}, {n}], got {list(y.shape)}")
    return x, y


def _outputs(s: Stacked, params: Params, x: torch.Tensor) -> torch.Tensor:
    """Outputs of B stacked parameter sets on shared x: params [B, ...] → [B, N, C]."""
    out = vmap(lambda p: functional_call(s.template, p, (x,)))(params)
    return out.unsqueeze(-1) if out.dim() == 2 else out


def _predictions(out: torch.Tensor) -> torch.Tensor:
    """Class predictions from [B, N, C]; a single output is a binary logit (class 1 where > 0)."""
    return (out[..., 0] > 0).long() if out.shape[-1] == 1 else out.argmax(-1)


def _accuracy(s: Stacked, params: Params, x: torch.Tensor, y: torch.Tensor, chunk: int) -> torch.Tensor:
    """Train accuracy of B parameter sets ([B, ...]) against labels y [B, N]: [B]."""
    b = next(iter(params.values())).shape[0]
    acc = []
    for i in range(0, b, chunk):
        out = _outputs(s, {k: v[i : i + chunk] for k, v in params.items()}, x)
        acc.append((_predictions(out) == y[i : i + chunk]).to(x.dtype).mean(1))
    return torch.cat(acc)


# ---------------------------------------------------------------------------------------------
# PAC-Bayes σ


def _perturbed_accuracy(s: Stacked, theta: Params, scale_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                        sigma: torch.Tensor, x: torch.Tensor, y: torch.Tensor, n_samples: int, seed: int,
                        chunk: int) -> torch.Tensor:
    """Mean train accuracy of θ + scale ⊙ z over ``n_samples`` draws z ~ N(0, I), per member: [P].

    The draws depend on (seed, draw index) only: every σ probed by the search, and every member,
    sees the same z (common random numbers), so the searched curve σ ↦ accuracy is one fixed
    function rather than a fresh noisy estimate at each probe.
    """
    p_count = sigma.shape[0]
    total = torch.zeros(p_count, dtype=x.dtype, device=x.device)
    for block, start in enumerate(range(0, n_samples, _DRAW_BLOCK)):
        k = min(_DRAW_BLOCK, n_samples - start)
        g = torch.Generator().manual_seed(stream_seed(seed, f"pac_bayes_sigma:{block}"))
        perturbed = {}
        for name, t in theta.items():  # t: [P, ...]
            z = torch.randn((k, *t.shape[1:]), generator=g, dtype=t.dtype).to(t.device)
            scale = scale_fn(t, sigma.to(t).reshape(-1, *([1] * (t.dim() - 1))))  # [P, ...]
            perturbed[name] = (t.unsqueeze(1) + scale.unsqueeze(1) * z.unsqueeze(0)).flatten(0, 1)  # [P·k, ...]
        acc = _accuracy(s, perturbed, x, y.repeat_interleave(k, 0), chunk)
        total += acc.reshape(p_count, k).sum(1)
    return total / n_samples


@torch.no_grad()
def _fingerprint(tensors: list[torch.Tensor]) -> tuple:
    """Identifies tensors' current contents: storage, in-place version, shape and sum (the sum
    guards against a freed storage reused by a new tensor)."""
    return tuple((t.data_ptr(), t._version, tuple(t.shape), t.dtype, str(t.device), float(t.double().sum()))
                 for t in tensors)


#: The last σ search, per magnitude_aware flag: the six PAC-Bayes measures share two searches
#: (isotropic and magnitude-aware) when they are computed one after another on the same weights.
_LAST_SEARCH: dict[bool, tuple[tuple, FlatnessResult]] = {}


def pac_bayes_sigma_result(model, data, target_drop: float = 0.1, n_samples: int = 64, tol: float = 1e-2,
                           max_iter: int = 40, seed: int = 0, magnitude_aware: bool = False,
                           epsilon: float = MAG_EPSILON, sigma0: float = 1e-2, chunk: int = 64) -> FlatnessResult:
    """Search the largest noise scale σ whose Monte-Carlo train-accuracy drop stays ≤ ``target_drop``.

    The search is deterministic, so a repeated call on unchanged weights and data with the same
    arguments returns the previous result (one per ``magnitude_aware`` flag is kept).

    Isotropic: θ + u, u ~ N(0, σ² I) on every parameter (biases included). Magnitude-aware
    (Jiang et al.'s σ'): u_i ~ N(0, σ'² θ_i² + ε²) with ε = ``epsilon`` (default 1e-3, as in
    Jiang et al. 2020, App. C.3). The drop is ``acc(θ) − mean_j acc(θ + u_j)`` over ``n_samples``
    draws, absolute (accuracies in [0, 1]).

    Search, per member, on a log scale: start at ``sigma0``; while no σ with drop > target is
    known multiply by 10, while no σ with drop ≤ target is known divide by 10; once bracketed,
    bisect geometrically (σ = √(lo·hi)) until hi/lo − 1 ≤ ``tol``. Each probe is one accuracy
    evaluation; ``max_iter`` bounds them all. Members are searched together, each with its own
    bracket; a finished member is no longer evaluated.

    Args:
        model: ``nn.Module`` or population (classifier: argmax of the outputs, or the sign of a
            single output).
        data: (x [N, ...], y [N] or [P, N]) training inputs and integer labels.
        target_drop: allowed accuracy drop, in (0, 1] (Jiang et al. use 0.1).
        n_samples: Monte-Carlo draws per probe; the standard error of the mean accuracy is at most
            0.5/√n_samples.
        tol: relative width of the final bracket.
        max_iter: maximum number of probes per member.
        seed: seeds the draws (results are deterministic given it, and a member's result does not
            depend on the rest of the population).
        magnitude_aware: use σ' (noise relative to |θ_i|) instead of σ.
        epsilon: ε of the magnitude-aware noise.
        sigma0: first σ probed.
        chunk: perturbed models per vmapped forward (memory: chunk × N × widest layer).

    Returns:
        :class:`FlatnessResult`; fields 0-d for a module, [P] for a population.
    """
    if not 0 < target_drop <= 1:
        raise ValueError(f"target_drop: expected a number in (0, 1], got {target_drop}")
    if n_samples < 1 or max_iter < 1 or chunk < 1:
        raise ValueError(f"n_samples, max_iter, chunk: expected ≥ 1, got {n_samples}, {max_iter}, {chunk}")
    if not tol > 0 or not sigma0 > 0 or not epsilon >= 0:
        raise ValueError(f"tol, sigma0: expected > 0 and epsilon ≥ 0, got {tol}, {sigma0}, {epsilon}")
    s = stacked(model)
    require_eval(s.template)
    x, y = train_data(data, s)
    theta = {k: v.detach() for k, v in s.params.items()}
    key = (_fingerprint([*theta.values(), x, y]), tuple(theta), s.single, target_drop, n_samples, tol, max_iter,
           seed, epsilon, sigma0)
    cached = _LAST_SEARCH.get(magnitude_aware)
    if cached is not None and cached[0] == key:
        return cached[1]
    result = _search(s, theta, x, y, target_drop, n_samples, tol, max_iter, seed, magnitude_aware, epsilon, sigma0,
                     chunk)
    _LAST_SEARCH[magnitude_aware] = (key, result)
    return result


def _search(s: Stacked, theta: Params, x: torch.Tensor, y: torch.Tensor, target_drop: float, n_samples: int,
            tol: float, max_iter: int, seed: int, magnitude_aware: bool, epsilon: float, sigma0: float,
            chunk: int) -> FlatnessResult:
    """The search of :func:`pac_bayes_sigma_result` on validated arguments."""
    if magnitude_aware:
        scale_fn = lambda t, sg: torch.sqrt(sg**2 * t**2 + epsilon**2)
    else:
        scale_fn = lambda t, sg: sg.expand_as(t)

    base = _accuracy(s, theta, x, y, chunk).double().cpu()
    p_count = s.size
    lo = torch.zeros(p_count, dtype=torch.float64)  # 0: no feasible σ known yet
    hi = torch.full((p_count,), math.inf, dtype=torch.float64)  # inf: no infeasible σ known yet
    drop_lo = torch.zeros(p_count, dtype=torch.float64)
    n_iter = torch.zeros(p_count, dtype=torch.int64)
    converged = torch.zeros(p_count, dtype=torch.bool)
    for _ in range(max_iter):
        active = (~converged).nonzero().flatten()
        if active.numel() == 0:
            break
        a_lo, a_hi = lo[active], hi[active]
        probe = torch.where(
            (a_lo > 0) & torch.isfinite(a_hi), torch.sqrt(a_lo * a_hi),
            torch.where(a_lo > 0, a_lo * 10, torch.where(torch.isfinite(a_hi), a_hi / 10, torch.full_like(a_lo, sigma0))))
        idx = active.to(x.device)
        acc = _perturbed_accuracy(s, {k: v[idx] for k, v in theta.items()}, scale_fn, probe.to(x.device),
                                  x, y[idx], n_samples, seed, chunk).double().cpu()
        drop = base[active] - acc
        ok = drop <= target_drop
        lo[active] = torch.where(ok, probe, a_lo)
        drop_lo[active] = torch.where(ok, drop, drop_lo[active])
        hi[active] = torch.where(ok, a_hi, probe)
        n_iter[active] += 1
        # Past SIGMA_MAX the weights are noise: if the drop still does not exceed the target (a
        # model near chance accuracy), no σ does, and the largest feasible σ is unbounded.
        unbounded = (lo >= SIGMA_MAX) & ~torch.isfinite(hi)
        lo[unbounded] = math.inf
        converged = ((lo > 0) & torch.isfinite(hi) & (hi / lo - 1 <= tol)) | unbounded

    dtype = x.dtype
    return FlatnessResult(
        sigma=s.finish(lo.to(dtype)), upper=s.finish(hi.to(dtype)), accuracy_drop=s.finish(drop_lo.to(dtype)),
        base_accuracy=s.finish(base.to(dtype)), n_iter=s.finish(n_iter), converged=s.finish(converged),
    )


def _report(result: FlatnessResult, value: torch.Tensor, what: str, max_iter: int,
            with_convergence: bool) -> torch.Tensor | Estimate:
    """``value`` with the search's per-member flags (``with_convergence``), or ``value`` after a
    ``RuntimeWarning`` naming the members whose search did not converge."""
    if with_convergence:
        return Estimate(value, result.converged)
    failed = ~result.converged.reshape(-1)
    if failed.any():
        members = failed.nonzero().flatten().tolist()
        warnings.warn(f"{what}: the σ search did not converge within max_iter={max_iter} for member(s) "
                      f"{members[:10]}{' …' if len(members) > 10 else ''}; their σ is the lower end of an "
                      "unfinished bracket (see pac_bayes_sigma_result for upper, n_iter, converged)",
                      RuntimeWarning, stacklevel=3)
    return value


@register("pac_bayes_sigma", "flatness", needs=("params", "data"), lower_is_simpler=False, cost="forward")
def pac_bayes_sigma(model, data, target_drop: float = 0.1, n_samples: int = 64, tol: float = 1e-2,
                    max_iter: int = 40, seed: int = 0, magnitude_aware: bool = False, with_convergence: bool = False,
                    **kwargs) -> torch.Tensor | Estimate:
    """Largest Gaussian weight-noise σ keeping the train-accuracy drop ≤ 0.1 (Jiang et al. 2020).

    See :func:`pac_bayes_sigma_result` for the arguments (``epsilon``, ``sigma0``, ``chunk`` pass
    through ``kwargs``). Members whose search did not converge raise a ``RuntimeWarning``; with
    ``with_convergence=True`` an :class:`~implicitreg.measures.core.Estimate` carries their flags
    instead (so do all the PAC-Bayes measures below).

    Returns:
        σ: 0-d for a module, [P] for a population.
    """
    result = pac_bayes_sigma_result(model, data, target_drop, n_samples, tol, max_iter, seed, magnitude_aware,
                                    **kwargs)
    return _report(result, result.sigma, "pac_bayes_sigma", max_iter, with_convergence)


# ---------------------------------------------------------------------------------------------
# PAC-Bayes bound terms


def _flat(params: Params) -> torch.Tensor:
    return torch.cat([p.detach().flatten(1) for p in params.values()], dim=1)  # [P, ω]


def pac_bayes_bound_terms(model, init, data, sigma, magnitude_aware: bool = False,
                          epsilon: float = MAG_EPSILON) -> dict[str, torch.Tensor]:
    """The PAC-Bayes complexity terms of Jiang et al. (2020, App. C.3) for a given noise scale.

    With m training points, ω parameters, w the parameters and w⁰ the initialization:

    - ``pacbayes.init``  (eq. 48): ‖w − w⁰‖²₂ / (4σ²) + log(m/σ) + 10
    - ``pacbayes.orig``  (eq. 49): ‖w‖²₂ / (4σ²) + log(m/σ) + 10
    - ``pacbayes.flatness`` (eq. 53): 1/σ²

    and, with ``magnitude_aware=True`` (σ = σ', ε = ``epsilon``):

    - ``pacbayes.mag.init`` (eq. 56): ¼ Σᵢ log[(ε² + (σ'²+1)‖w − w⁰‖²₂/ω) / (ε² + σ'²(wᵢ − wᵢ⁰)²)] + log(m/σ') + 10
    - ``pacbayes.mag.orig`` (eq. 57): the same with ‖w‖²₂ in the numerator (denominator unchanged)
    - ``pacbayes.mag.flatness`` (eq. 61): 1/σ'²

    These are the KL-based terms the paper correlates with the generalization gap — the
    log(m/δ) of the underlying bound is replaced by log(m/σ) there, and no √(·/m) is taken.
    Biases count as parameters (as in the σ search, which perturbs them).

    Args:
        model: ``nn.Module`` or population.
        init: its initialization (module, population or :class:`Stacked`), or None to compute
            only the ``orig`` and ``flatness`` terms (the magnitude-aware ``orig`` needs it).
        data: (x, y) training data; only m = N is read.
        sigma: the noise scale (σ or σ'): a float, 0-d or [P] tensor (e.g. from :func:`pac_bayes_sigma`).
        magnitude_aware: compute the ``pacbayes.mag.*`` terms instead.
        epsilon: ε of the magnitude-aware terms.

    Returns:
        name → 0-d tensor (module) or [P] (population).
    """
    s = stacked(model)
    x, _ = train_data(data, s)
    m = x.shape[0]
    w = _flat(s.params)
    sig = torch.as_tensor(sigma, dtype=w.dtype, device=w.device).reshape(-1).expand(s.size)
    if not bool((sig > 0).all()) or not bool(torch.isfinite(sig).all()):
        raise ValueError(f"sigma: expected finite values > 0, got {sig.tolist()}")
    w0 = None
    if init is not None:
        s0 = stacked(init)
        if set(s0.params) != set(s.params):
            raise ValueError(f"init has parameters {sorted(s0.params)}, the model {sorted(s.params)}")
        w0 = _flat({k: s0.params[k].to(w) for k in s.params}).expand_as(w)
    tail = torch.log(m / sig) + 10
    if not magnitude_aware:
        terms = {"pacbayes.orig": w.pow(2).sum(1) / (4 * sig**2) + tail}
        if w0 is not None:
            terms["pacbayes.init"] = (w - w0).pow(2).sum(1) / (4 * sig**2) + tail
        terms["pacbayes.flatness"] = 1 / sig**2
    else:
        if w0 is None:
            raise ValueError("init: the magnitude-aware terms need the initialization (their denominator is w − w⁰)")
        omega = w.shape[1]
        eps2, sig2 = epsilon**2, (sig**2).unsqueeze(1)
        denominator = eps2 + sig2 * (w - w0).pow(2)  # [P, ω]

        def mag(reference: torch.Tensor) -> torch.Tensor:
            numerator = eps2 + (sig2 + 1) * reference.pow(2).sum(1, keepdim=True) / omega
            return 0.25 * torch.log(numerator / denominator).sum(1) + tail

        terms = {"pacbayes.mag.init": mag(w - w0), "pacbayes.mag.orig": mag(w), "pacbayes.mag.flatness": 1 / sig**2}
    return {k: s.finish(v) for k, v in terms.items()}


def _terms_with_search(model, init, data, magnitude_aware: bool, term: str, with_convergence: bool,
                       kwargs: dict) -> torch.Tensor | Estimate:
    result = pac_bayes_sigma_result(model, data, magnitude_aware=magnitude_aware, **kwargs)
    # The terms are undefined where σ = 0 (no feasible σ) or σ = inf (a model at chance): NaN there,
    # so that one such member does not stop a tracked population.
    defined = (result.sigma > 0) & torch.isfinite(result.sigma)
    sigma = torch.where(defined, result.sigma, torch.ones_like(result.sigma))
    terms = pac_bayes_bound_terms(model, init, data, sigma, magnitude_aware=magnitude_aware,
                                  epsilon=kwargs.get("epsilon", MAG_EPSILON))
    value = torch.where(defined.to(terms[term].device), terms[term], torch.full_like(terms[term], math.nan))
    name = "pac_bayes_mag" if magnitude_aware else "pac_bayes"
    return _report(result, value, name, kwargs.get("max_iter", 40), with_convergence)


def _flatness(model, data, magnitude_aware: bool, with_convergence: bool, kwargs: dict) -> torch.Tensor | Estimate:
    result = pac_bayes_sigma_result(model, data, magnitude_aware=magnitude_aware, **kwargs)
    name = "pac_bayes_mag_flatness" if magnitude_aware else "pac_bayes_flatness"
    return _report(result, 1 / result.sigma**2, name, kwargs.get("max_iter", 40), with_convergence)


@register("pac_bayes_flatness", "flatness", needs=("params", "data"), lower_is_simpler=True, cost="forward")
def pac_bayes_flatness(model, data, with_convergence: bool = False, **kwargs) -> torch.Tensor | Estimate:
    """1/σ² with σ from the accuracy-drop search (Jiang et al. 2020, pacbayes.flatness).

    inf where no feasible σ was found (σ = 0; the search then warns that it did not converge).
    """
    return _flatness(model, data, False, with_convergence, kwargs)


@register("pac_bayes_orig", "flatness", needs=("params", "data"), lower_is_simpler=True, cost="forward")
def pac_bayes_orig(model, data, with_convergence: bool = False, **kwargs) -> torch.Tensor | Estimate:
    """‖w‖²/(4σ²) + log(m/σ) + 10 with σ from the search (Jiang et al. 2020, pacbayes.orig)."""
    return _terms_with_search(model, None, data, False, "pacbayes.orig", with_convergence, kwargs)


@register("pac_bayes_init", "flatness", needs=("params", "init", "data"), lower_is_simpler=True, cost="forward")
def pac_bayes_init(model, init, data, with_convergence: bool = False, **kwargs) -> torch.Tensor | Estimate:
    """‖w − w⁰‖²/(4σ²) + log(m/σ) + 10 with σ from the search (Jiang et al. 2020, pacbayes.init)."""
    return _terms_with_search(model, init, data, False, "pacbayes.init", with_convergence, kwargs)


@register("pac_bayes_mag_flatness", "flatness", needs=("params", "data"), lower_is_simpler=True, cost="forward")
def pac_bayes_mag_flatness(model, data, with_convergence: bool = False, **kwargs) -> torch.Tensor | Estimate:
    """1/σ'² with the magnitude-aware σ' from the search (Jiang et al. 2020, pacbayes.mag.flatness).

    inf where no feasible σ' was found (σ' = 0; the search then warns that it did not converge).
    """
    return _flatness(model, data, True, with_convergence, kwargs)


@register("pac_bayes_mag_init", "flatness", needs=("params", "init", "data"), lower_is_simpler=True, cost="forward")
def pac_bayes_mag_init(model, init, data, with_convergence: bool = False, **kwargs) -> torch.Tensor | Estimate:
    """Magnitude-aware PAC-Bayes term relative to init (Jiang et al. 2020, pacbayes.mag.init)."""
    return _terms_with_search(model, init, data, True, "pacbayes.mag.init", with_convergence, kwargs)


@register("pac_bayes_mag_orig", "flatness", needs=("params", "init", "data"), lower_is_simpler=True, cost="forward")
def pac_bayes_mag_orig(model, init, data, with_convergence: bool = False, **kwargs) -> torch.Tensor | Estimate:
    """Magnitude-aware PAC-Bayes term relative to the origin (Jiang et al. 2020, pacbayes.mag.orig)."""
    return _terms_with_search(model, init, data, True, "pacbayes.mag.orig", with_convergence, kwargs)
