"""Independent reference computations, written from shared/design/metrics.md in plain numpy and loops.

Nothing here calls moediag; tests compare moediag's figures against these.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

POSITION_EDGES = (0, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


def softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


def logsumexp(row: np.ndarray) -> float:
    m = float(np.max(row))
    return m + math.log(sum(math.exp(float(x) - m) for x in row))


# -- load and imbalance ------------------------------------------------------------------------
def counts_of(ids: np.ndarray, num_experts: int) -> list[int]:
    c = [0] * num_experts
    for row in ids:
        for i in row:
            if i >= 0:
                c[int(i)] += 1
    return c


def imbalance(c: list[int], k: int, tokens: int, cold_eps: float = 0.1) -> dict[str, object]:
    e = len(c)
    total = sum(c)
    mean = total / e
    share = [x / total for x in c]
    var = sum((x - mean) ** 2 for x in c) / e  # population variance
    h = -sum(p * math.log(p) for p in share if p > 0)
    mad = sum(abs(a - b) for a in c for b in c) / (e * e)  # mean absolute difference
    return {
        "load": list(c),
        "load_share": share,
        "max_vio": max(c) / (k * tokens / e) - 1.0,
        "max_mean": max(c) / mean,
        "min_mean": min(c) / mean,
        "cv": math.sqrt(var) / mean,
        "entropy_norm": h / math.log(e),
        "effective_experts": math.exp(h),
        "gini": mad / (2 * mean),
        "dead_experts": [i for i in range(e) if c[i] == 0],
        "cold_experts": [i for i in range(e) if share[i] < cold_eps / e],
    }


# -- routing -----------------------------------------------------------------------------------
def topk_rows(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values per row, largest first (a plain sort)."""
    out = []
    for row in values:
        order = sorted(range(len(row)), key=lambda i: -row[i])
        out.append(order[:k])
    return np.array(out, dtype=np.int64).reshape(len(values), k)


def route_ref(
    logits: np.ndarray,
    k: int,
    score_function: str,
    bias: np.ndarray | None = None,
    n_group: int | None = None,
    topk_group: int | None = None,
) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    if score_function == "softmax":
        sel = softmax(z)
    elif score_function == "sigmoid":
        sel = sigmoid(z)
    else:
        sel = z.copy()
    if bias is not None:
        sel = sel + bias
    if n_group and topk_group:
        e = sel.shape[1]
        size = e // n_group
        out = []
        for row in sel:
            gscore = []
            for g in range(n_group):
                members = sorted(row[g * size : (g + 1) * size], reverse=True)
                gscore.append(members[0] + members[1] if score_function == "sigmoid" else members[0])
            keep = sorted(range(n_group), key=lambda g: -gscore[g])[:topk_group]
            masked = np.array([row[i] if i // size in keep else -np.inf for i in range(e)])
            out.append(topk_rows(masked[None], k)[0])
        return np.array(out, dtype=np.int64)
    return topk_rows(sel, k)


def allowed_ref(
    sel: np.ndarray, score_function: str, n_group: int | None, topk_group: int | None
) -> np.ndarray:
    """Boolean [n, E]: experts in the groups the rule keeps (all without group limits), by loops."""
    n, e = sel.shape
    if not (n_group and topk_group and n_group > 1):
        return np.ones((n, e), dtype=bool)
    size = e // n_group
    out = np.zeros((n, e), dtype=bool)
    for t, row in enumerate(sel):
        gscore = []
        for g in range(n_group):
            members = sorted(row[g * size : (g + 1) * size], reverse=True)
            gscore.append(members[0] + members[1] if score_function == "sigmoid" else members[0])
        for g in sorted(range(n_group), key=lambda g: -gscore[g])[:topk_group]:
            out[t, g * size : (g + 1) * size] = True
    return out


def margin_ref(
    logits: np.ndarray,
    ids: np.ndarray,
    score_function: str,
    bias: np.ndarray | None = None,
    n_group: int | None = None,
    topk_group: int | None = None,
) -> np.ndarray:
    """docs/metrics.md: lowest chosen minus highest unchosen allowed score, in probability units."""
    z = np.asarray(logits, dtype=np.float64)
    if score_function == "topk_softmax":
        choice = z + (0 if bias is None else bias)
        prob = softmax(choice)
    else:
        prob = (sigmoid(z) if score_function == "sigmoid" else softmax(z)) + (0 if bias is None else bias)
        choice = prob
    allowed = allowed_ref(choice, score_function, n_group, topk_group)
    out = []
    for t in range(len(z)):
        chosen = set(int(i) for i in ids[t] if i >= 0)
        low = min(prob[t, i] for i in chosen)
        rest = [prob[t, i] for i in range(z.shape[1]) if allowed[t, i] and i not in chosen]
        out.append(low - max(rest) if rest else np.nan)
    return np.array(out)


def distribution_ref(logits: np.ndarray, score_function: str) -> np.ndarray:
    if score_function == "sigmoid":
        s = sigmoid(logits)
        return s / s.sum(axis=1, keepdims=True)
    return softmax(logits)


# -- losses and router behaviour -----------------------------------------------------------------
def aux_loss(ids: np.ndarray, probs: np.ndarray, num_experts: int) -> float:
    """E * sum_i (c_i / (k T)) * P_i (balanced = 1)."""
    t, k = ids.shape
    c = counts_of(ids, num_experts)
    p = [sum(probs[r][i] for r in range(t)) / t for i in range(num_experts)]
    return num_experts * sum(c[i] / (k * t) * p[i] for i in range(num_experts))


def seq_aux_loss(ids: np.ndarray, probs: np.ndarray, seq: np.ndarray, num_experts: int) -> float:
    """Per run of equal sequence ids, then the mean over runs."""
    losses = []
    start = 0
    for t in range(1, len(seq) + 1):
        if t == len(seq) or seq[t] != seq[start]:
            losses.append(aux_loss(ids[start:t], probs[start:t], num_experts))
            start = t
    return sum(losses) / len(losses)


def z_loss(logits: np.ndarray) -> float:
    return sum(logsumexp(row) ** 2 for row in logits) / len(logits)


def router_entropy(probs: np.ndarray) -> float:
    return sum(-sum(p * math.log(p) for p in row if p > 0) for row in probs) / len(probs)


def confidence(probs: np.ndarray) -> float:
    return sum(max(row) for row in probs) / len(probs)


def margin_mean(scores: np.ndarray, k: int) -> float:
    vals = []
    for row in scores:
        s = sorted(row, reverse=True)
        vals.append(s[k - 1] - s[k])
    return sum(vals) / len(vals)


# -- capacity ------------------------------------------------------------------------------------
def capacity(cf: float, k: int, n: int, e: int) -> int:
    return math.ceil(Fraction(cf).limit_denominator(10_000) * k * n / e)


def bucket(pos: int) -> int:
    b = 0
    for i, edge in enumerate(POSITION_EDGES):
        if pos >= edge:
            b = i
    return b


def drops(
    ids: np.ndarray,
    weights: np.ndarray,
    groups: list[int],
    e: int,
    cf: float,
    policy: str,
    positions: list[int] | None = None,
) -> tuple[int, int, list[int], list[int]]:
    """Brute force: (dropped, assignments, dropped per bucket, assignments per bucket).

    ``groups`` gives each token's capacity group; a group is a run of equal consecutive values.
    """
    k = ids.shape[1]
    nb = len(POSITION_EDGES)
    dropped = assigned = 0
    d_b, a_b = [0] * nb, [0] * nb
    runs: list[list[int]] = []
    for t, g in enumerate(groups):
        if runs and groups[runs[-1][-1]] == g:
            runs[-1].append(t)
        else:
            runs.append([t])
    for run in runs:
        cap = capacity(cf, k, len(run), e)
        for expert in range(e):
            got = [(t, float(weights[t][s])) for t in run for s in range(k) if ids[t][s] == expert]
            if policy == "probs":
                got.sort(key=lambda tw: (-tw[1], tw[0]))
            for rank, (t, _) in enumerate(got):
                pos = positions[t] if positions is not None else run.index(t)
                b = bucket(pos)
                assigned += 1
                a_b[b] += 1
                if rank >= cap:
                    dropped += 1
                    d_b[b] += 1
    return dropped, assigned, d_b, a_b


# -- co-activation and consecutive ----------------------------------------------------------------
def coactivation(ids: np.ndarray, e: int) -> list[list[int]]:
    n = [[0] * e for _ in range(e)]
    for row in ids:
        chosen = [int(i) for i in row if i >= 0]
        for a in chosen:
            for b in chosen:
                n[a][b] += 1
    return n


def consecutive_same(top1: list[int], seq: list[int] | None) -> float | None:
    pairs = same = 0
    for t in range(len(top1) - 1):
        if seq is not None and seq[t] != seq[t + 1]:
            continue
        pairs += 1
        same += top1[t] == top1[t + 1]
    return same / pairs if pairs else None
