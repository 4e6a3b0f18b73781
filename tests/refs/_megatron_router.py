"""Run Megatron-Core's TopKRouter.routing on the CPU (gloo, world size 1) and print what it did as JSON.

Run as a script by tests/refs/test_megatron.py in its own process (it initialises torch.distributed and
Megatron's parallel state). ``TopKRouter.forward`` moves the weight to CUDA, so the logits are computed
here (x @ W.T, as its ``gating`` does) and ``routing`` (z-loss, group-limited top-k with the expert
bias, aux losses and their tracker) runs as in training.
"""

from __future__ import annotations

import json
import os
import sys
import warnings

warnings.simplefilter("ignore")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402


def main() -> None:
    spec = json.loads(sys.argv[1])
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ["MASTER_PORT"] = str(spec["port"])
    dist.init_process_group("gloo", rank=0, world_size=1)
    from megatron.core import parallel_state
    from megatron.core.process_groups_config import ProcessGroupCollection
    from megatron.core.transformer.moe.moe_utils import get_moe_layer_wise_logging_tracker
    from megatron.core.transformer.moe.router import TopKRouter
    from megatron.core.transformer.transformer_config import TransformerConfig

    parallel_state.initialize_model_parallel()
    e, h = spec["experts"], spec["hidden"]
    cfg = TransformerConfig(
        num_layers=1,
        hidden_size=h,
        num_attention_heads=1,
        num_moe_experts=e,
        moe_router_topk=spec["top_k"],
        moe_router_num_groups=spec["groups"],
        moe_router_group_topk=spec["kept"],
        moe_router_score_function=spec["score_function"],
        moe_router_pre_softmax=spec.get("pre_softmax", False),
        moe_router_load_balancing_type="aux_loss",
        moe_aux_loss_coeff=0.01,
        add_bias_linear=False,
        use_cpu_initialization=True,
    )
    torch.manual_seed(spec["seed"])
    router = TopKRouter(cfg, pg_collection=ProcessGroupCollection.use_mpu_process_groups())
    router.set_layer_number(1)
    if spec.get("bias"):
        router.expert_bias = torch.tensor(spec["bias"])  # (its buffer would need CUDA on construction)
    x = torch.randn(spec["tokens"], 1, h)
    logits = (x.reshape(-1, h) @ router.weight.data.T).view(spec["tokens"], 1, e)
    router.train()
    probs, routing_map = router.routing(logits)
    tracker = get_moe_layer_wise_logging_tracker()
    out = {
        "logits": logits.reshape(-1, e).tolist(),
        "probs": probs.detach().tolist(),
        "routing_map": routing_map.int().tolist(),
        "load_balancing_loss": float(tracker["load_balancing_loss"]["values"][0]),
    }
    print(json.dumps(out))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
