"""Masked multi-output training for the neural routers (MLP, matrix factorisation).

Outcome tables have holes: a missing score contributes nothing to the loss (it is masked out),
it is never a 0 target. Training runs in torch; the fitted weights are handed back as NumPy
arrays so routing needs no torch at all.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def scores_are_probabilities(Y: np.ndarray) -> bool:
    """True when every recorded score lies in [0, 1] (use a sigmoid output and BCE)."""
    obs = Y[~np.isnan(Y)]
    return bool(obs.size) and float(obs.min()) >= 0.0 and float(obs.max()) <= 1.0


def train_masked(module, X: np.ndarray, Y: np.ndarray, *, probabilities: bool, epochs: int, lr: float,
                 weight_decay: float, batch_size: int, patience: int, val_fraction: float, seed: int,
                 pair_weight: float = 0.0, forward: Callable | None = None):
    """Fit `module` (X -> logits (n, E)) on the observed entries of Y; early stopping on a held-out
    slice. `pair_weight` adds a pairwise ranking loss (Bradley-Terry, as in RouteLLM's matrix
    factorisation) over expert pairs of the same query, weighted by their score gap.
    Returns (module with the best validation weights, history dict)."""
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    n = len(X)
    order = rng.permutation(n)
    n_val = int(round(n * val_fraction)) if n >= 20 else 0
    val, tr = order[:n_val], order[n_val:]
    Xt = torch.as_tensor(X, dtype=torch.float32)
    mask = torch.as_tensor(~np.isnan(Y))
    Yt = torch.as_tensor(np.nan_to_num(Y, nan=0.0), dtype=torch.float32)
    fwd = forward or module
    opt = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=weight_decay)

    def loss_of(idx, train: bool):
        logits = fwd(Xt[idx])
        m, y = mask[idx], Yt[idx]
        if probabilities:
            point = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")
        else:
            point = (logits - y) ** 2
        loss = (point * m).sum() / m.sum().clamp(min=1)
        if pair_weight > 0:
            gap = y.unsqueeze(2) - y.unsqueeze(1)                    # (b, E, E): y_i - y_j
            both = m.unsqueeze(2) & m.unsqueeze(1) & (gap > 0)
            diff = logits.unsqueeze(2) - logits.unsqueeze(1)
            pair = torch.nn.functional.softplus(-diff) * gap
            loss = loss + pair_weight * (pair * both).sum() / both.sum().clamp(min=1)
        return loss

    best, best_state, bad, history = float("inf"), None, 0, []
    for epoch in range(epochs):
        module.train()
        perm = tr[rng.permutation(len(tr))]
        for i in range(0, len(perm), batch_size):
            idx = torch.as_tensor(perm[i:i + batch_size])
            opt.zero_grad()
            loss = loss_of(idx, True)
            loss.backward()
            opt.step()
        module.eval()
        with torch.no_grad():
            v = float(loss_of(torch.as_tensor(val if n_val else tr), False))
        history.append(v)
        if v < best - 1e-5:
            best, bad = v, 0
            best_state = {k: t.detach().clone() for k, t in module.state_dict().items()}
        else:
            bad += 1
            if bad >= patience:
                break
    if best_state is not None:
        module.load_state_dict(best_state)
    module.eval()
    return module, {"epochs": len(history), "best_val_loss": best, "val_rows": int(n_val)}


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -40, 40)))
