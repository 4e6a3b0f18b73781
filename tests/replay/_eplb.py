"""DeepSeek EPLB's published ``rebalance_experts`` (github.com/deepseek-ai/EPLB, eplb.py), rewritten here
step by step as the baseline that moediag's placements are measured against. Nothing here calls moediag.

Steps, as in EPLB: (1) pack the expert groups onto nodes by longest-processing-time (heaviest first, to
the lightest node with room, float32 sums); (2) in each node give each redundant copy to the expert with
the highest load per copy; (3) pack the node's copies (each at load / copies) onto its GPUs the same way.
The global policy is the same with one group and one node. EPLB picks hierarchical when the groups divide
into the nodes, global otherwise.
"""

from __future__ import annotations

import torch


def _packing(weight: torch.Tensor, num_packs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[X, n] weights -> pack index and rank in pack of each item, n / num_packs items per pack."""
    layers, n = weight.shape
    per = n // num_packs
    if per == 1:
        idx = torch.arange(n, dtype=torch.int64).expand(layers, n)
        return idx, torch.zeros_like(idx)
    order = weight.float().sort(-1, descending=True).indices
    pack = torch.full((layers, n), -1, dtype=torch.int64)
    rank = torch.full((layers, n), -1, dtype=torch.int64)
    for i in range(layers):
        sums = [torch.tensor(0.0)] * num_packs
        counts = [0] * num_packs
        for item in order[i].tolist():
            p = min((q for q in range(num_packs) if counts[q] < per), key=lambda q: float(sums[q]))
            pack[i, item] = p
            rank[i, item] = counts[p]
            sums[p] = sums[p] + weight[i, item]
            counts[p] += 1
    return pack, rank


def _replicate(weight: torch.Tensor, num_phy: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n, num_log = weight.shape
    phy2log = torch.arange(num_phy, dtype=torch.int64).repeat(n, 1)
    rank = torch.zeros(n, num_phy, dtype=torch.int64)
    count = torch.ones(n, num_log, dtype=torch.int64)
    rows = torch.arange(n)
    for i in range(num_log, num_phy):
        hot = (weight / count).max(dim=-1).indices
        phy2log[:, i] = hot
        rank[:, i] = count[rows, hot]
        count[rows, hot] += 1
    return phy2log, rank, count


def _inverse(perm: torch.Tensor) -> torch.Tensor:
    inv = torch.empty_like(perm)
    inv.scatter_(1, perm, torch.arange(perm.size(1), dtype=torch.int64).expand(perm.shape))
    return inv


def _hierarchical(weight: torch.Tensor, num_phy: int, num_groups: int, num_nodes: int, num_gpus: int):
    layers, num_log = weight.shape
    group_size = num_log // num_groups
    groups_per_node = num_groups // num_nodes
    per_gpu = num_phy // num_gpus
    group_w = weight.unflatten(-1, (num_groups, group_size)).sum(-1)
    gpack, grank = _packing(group_w, num_nodes)
    log2mlog = (
        ((gpack * groups_per_node + grank) * group_size).unsqueeze(-1) + torch.arange(group_size)
    ).flatten(-2)
    mlog2log = _inverse(log2mlog)
    w_mlog = weight.gather(-1, mlog2log).view(-1, num_log // num_nodes)
    phy2mlog, phyrank, mlogcnt = _replicate(w_mlog, num_phy // num_nodes)
    w_phy = (w_mlog / mlogcnt).gather(-1, phy2mlog)
    pack, rank = _packing(w_phy, num_gpus // num_nodes)
    pphy2phy = _inverse(pack * per_gpu + rank)
    pphy2mlog = phy2mlog.gather(-1, pphy2phy)
    pphy2mlog = (
        pphy2mlog.view(layers, num_nodes, -1) + torch.arange(0, num_log, num_log // num_nodes).view(1, -1, 1)
    ).flatten(-2)
    return mlog2log.gather(-1, pphy2mlog)


def rebalance_experts(
    weight: torch.Tensor, num_replicas: int, num_groups: int, num_nodes: int, num_gpus: int
) -> torch.Tensor:
    """[layers, E] loads -> [layers, num_replicas] expert of each physical slot (GPU g: slots g*S..)."""
    weight = weight.float().cpu()
    if num_groups % num_nodes == 0:
        return _hierarchical(weight, num_replicas, num_groups, num_nodes, num_gpus)
    return _hierarchical(weight, num_replicas, 1, 1, num_gpus)


def eplb_ranks(
    loads: torch.Tensor, ep_size: int, replicas: int = 0, num_groups: int = 1, num_nodes: int = 1
) -> list[list[int]]:
    """One layer's EPLB placement as moediag ranks (a list of expert ids per GPU)."""
    e = loads.numel()
    phy = rebalance_experts(loads.reshape(1, e), e + replicas, num_groups, num_nodes, ep_size)[0]
    per = (e + replicas) // ep_size
    return [sorted(phy[g * per : (g + 1) * per].tolist()) for g in range(ep_size)]
