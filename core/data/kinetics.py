"""Transcription-splicing-degradation kinetics (the model scvelo inverts), solved in closed form.

For one gene with transcription rate alpha, splicing beta and degradation gamma (La Manno et al. 2018):
    du/dt = alpha - beta u,        ds/dt = beta u - gamma s
Starting from (u0, s0) with alpha constant, for beta != gamma:
    u(t) = u0 e^{-beta t} + alpha/beta (1 - e^{-beta t})
    s(t) = s0 e^{-gamma t} + alpha/gamma (1 - e^{-gamma t})
           + (alpha - beta u0) / (gamma - beta) (e^{-gamma t} - e^{-beta t})
A gene is induced (alpha = alpha_on) from t = 0 to its switch time, then repressed (alpha = 0), as in
scvelo's own simulation. Shapes: n cells, g genes; times broadcast as [n, 1] against per-gene rates [g].
"""

from __future__ import annotations

import numpy as np


def _evolve(u0, s0, alpha, beta, gamma, t):
    eb, eg = np.exp(-beta * t), np.exp(-gamma * t)
    u = u0 * eb + alpha / beta * (1 - eb)
    s = s0 * eg + alpha / gamma * (1 - eg) + (alpha - beta * u0) / (gamma - beta) * (eg - eb)
    return u, s


def unspliced_spliced(t, alpha_on, beta, gamma, t_switch):
    """Expected (u, s) [n, g] at times t [n, 1] for genes induced until t_switch [g], then repressed."""
    t = np.asarray(t, dtype=np.float64)
    t_on = np.minimum(t, t_switch)
    u, s = _evolve(0.0, 0.0, alpha_on, beta, gamma, t_on)
    t_off = np.maximum(t - t_switch, 0.0)
    # where repressed, t_on is t_switch, so (u, s) is already the state at the switch
    u_rep, s_rep = _evolve(u, s, 0.0, beta, gamma, t_off)
    repressed = t > t_switch
    return np.where(repressed, u_rep, u), np.where(repressed, s_rep, s)


def spliced_velocity(u, s, beta, gamma):
    """ds/dt = beta u - gamma s, the RNA velocity of each gene."""
    return beta * u - gamma * s
