"""Formats transformers does not write: FP8 block scales, MXFP4, DeepSeek's inference format, MTP layers,
Megatron-Core names. Built by hand from a real tiny model's tensors."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from moediag.checkpoint import analyze_checkpoint, router_specs

from .conftest import Factory, fp8_quantise, mxfp4_quantise, write_checkpoint


def _config(built_path: Path) -> dict:
    return json.loads((built_path / "config.json").read_text())


def test_fp8_deepseek_v3_with_planted_duplicate(ckpt: Factory, tmp_path: Path) -> None:
    built = ckpt("deepseek_v3")
    sd = load_file(str(built.path / "model.safetensors"))
    cfg = _config(built.path)
    cfg["quantization_config"] = {
        "quant_method": "fp8",
        "fmt": "e4m3",
        "weight_block_size": [8, 16],
        "activation_scheme": "dynamic",
    }
    rx = re.compile(r"\.experts\.(\d+)\.(gate|up|down)_proj\.weight$")
    names = [n for n in sd if rx.search(n)]
    for name in names:
        if ".layers.2.mlp.experts.6." in name:  # expert 6 of layer 2 := expert 1
            sd[name] = sd[name.replace(".experts.6.", ".experts.1.")].clone()
    for name in names:
        q, s = fp8_quantise(sd[name], (8, 16))
        sd[name] = q
        sd[name[: -len("weight")] + "weight_scale_inv"] = s
    path = write_checkpoint(tmp_path / "fp8", sd, cfg)
    d = analyze_checkpoint(path).to_dict()
    s = d["summary"]
    assert (
        s["total_params"] == built.total and s["active_params"] == built.active
    )  # scales hold no parameters
    assert s["quantization"] == {"method": "fp8", "expert_tensors": {"fp8": 6}}
    layer2 = next(x for x in d["layers"] if x["layer"] == 2)
    assert [p[:2] for p in layer2["redundant_pairs"]] == [[1, 6]]
    assert layer2["distinct_experts"] == 7 and layer2["weights_note"] is None
    assert layer2["quantization"] == ["fp8"]
    assert next(x for x in d["layers"] if x["layer"] == 1)["redundant_pairs"] == []


def test_mxfp4_gpt_oss_with_planted_duplicate(tmp_path: Path) -> None:
    torch.manual_seed(3)
    e, h, i = 4, 64, 32  # MXFP4 groups of 32 along the input dimension
    tensors: dict[str, torch.Tensor] = {
        "model.embed_tokens.weight": torch.randn(16, h),
        "lm_head.weight": torch.randn(16, h),
        "model.norm.weight": torch.ones(h),
    }
    for L in range(2):
        p = f"model.layers.{L}.mlp."
        gu = torch.randn(e, 2 * i, h)
        dn = torch.randn(e, h, i)
        if L == 1:
            gu[3], dn[3] = gu[0], dn[0]
        gb, gs = mxfp4_quantise(gu)
        db, ds = mxfp4_quantise(dn)
        tensors.update(
            {
                p + "router.weight": torch.randn(e, h),
                p + "router.bias": torch.randn(e),
                p + "experts.gate_up_proj_blocks": gb,
                p + "experts.gate_up_proj_scales": gs,
                p + "experts.gate_up_proj_bias": torch.randn(e, 2 * i),
                p + "experts.down_proj_blocks": db,
                p + "experts.down_proj_scales": ds,
                p + "experts.down_proj_bias": torch.randn(e, h),
                f"model.layers.{L}.input_layernorm.weight": torch.ones(h),
            }
        )
    cfg = {
        "model_type": "gpt_oss",
        "hidden_size": h,
        "intermediate_size": i,
        "num_hidden_layers": 2,
        "num_local_experts": e,
        "num_experts_per_tok": 2,
        "quantization_config": {
            "quant_method": "mxfp4",
            "modules_to_not_convert": ["model.layers.*.mlp.router"],
        },
    }
    path = write_checkpoint(tmp_path / "mxfp4", tensors, cfg)
    # scales that do not match their blocks (one row short): bad input, exit 2, naming both tensors
    from moediag.errors import InvalidInputError

    short = dict(tensors, **{"model.layers.1.mlp.experts.down_proj_scales": ds[:, :-1].contiguous()})
    with pytest.raises(
        InvalidInputError, match="down_proj_blocks .* and scales .*down_proj_scales .* do not match"
    ):
        analyze_checkpoint(write_checkpoint(tmp_path / "short", short, cfg))
    bare = {k: v for k, v in tensors.items() if k != "model.layers.1.mlp.experts.down_proj_scales"}
    with pytest.raises(InvalidInputError, match="down_proj_blocks blocks have no _scales tensor"):
        analyze_checkpoint(write_checkpoint(tmp_path / "bare", bare, cfg))
    floats = dict(tensors, **{"model.layers.1.mlp.experts.down_proj_scales": ds.float()})
    with pytest.raises(InvalidInputError, match="is F32; expected U8"):
        analyze_checkpoint(write_checkpoint(tmp_path / "floats", floats, cfg))
    # layer 1's down_proj blocks lost whole (its scales and bias kept): named, and its scales are no params
    lost = {k: v for k, v in tensors.items() if k != "model.layers.1.mlp.experts.down_proj_blocks"}
    s = analyze_checkpoint(write_checkpoint(tmp_path / "lost", lost, cfg), weights=False).to_dict()["summary"]
    joined = " | ".join(s["warnings"])
    assert "no down projection that the other MoE layers have" in joined
    assert "down_proj_scales (no model.layers.1.mlp.experts.down_proj_blocks)" in joined
    d = analyze_checkpoint(path).to_dict()
    assert s["total_params"] == d["summary"]["total_params"] - e * h * i  # exactly the lost blocks
    s = d["summary"]
    per_expert = 2 * i * h + h * i + 2 * i + h  # blocks hold two parameters a byte; scales hold none
    assert s["expert_params"] == 2 * e * per_expert
    assert s["expert_intermediate_size"] == i
    assert s["active_params"] == s["total_params"] - 2 * (e - 2) * per_expert
    l1 = next(x for x in d["layers"] if x["layer"] == 1)
    assert [p[:2] for p in l1["redundant_pairs"]] == [[0, 3]] and l1["distinct_experts"] == 3
    assert l1["quantization"] == ["mxfp4"]
    assert next(x for x in d["layers"] if x["layer"] == 0)["redundant_pairs"] == []


def test_unsupported_quantisation_is_a_note_not_a_crash(tmp_path: Path) -> None:
    e, h, i = 4, 32, 24
    t = {"model.embed_tokens.weight": torch.randn(8, h)}
    for j in range(e):
        for proj, shape in (("gate_proj", (i // 8, h)), ("up_proj", (i // 8, h)), ("down_proj", (h // 8, i))):
            t[f"model.layers.0.mlp.experts.{j}.{proj}.qweight"] = torch.randint(
                0, 100, shape, dtype=torch.int32
            )
            t[f"model.layers.0.mlp.experts.{j}.{proj}.scales"] = torch.rand(1, shape[1])
    t["model.layers.0.mlp.gate.weight"] = torch.randn(e, h)
    path = write_checkpoint(
        tmp_path / "gptq",
        t,
        {
            "model_type": "qwen3_moe",
            "num_experts": e,
            "num_experts_per_tok": 2,
            "hidden_size": h,
            "quantization_config": {"quant_method": "gptq", "bits": 4},
        },
    )
    d = analyze_checkpoint(path).to_dict()
    layer = d["layers"][0]
    assert layer["redundant_pairs"] is None and "not" in layer["weights_note"]
    assert layer["router_norms"] is not None
    assert d["summary"]["expert_params"] == e * 3 * (i * h // 8) * 8  # qweight packs 8 int4 values


def test_deepseek_inference_format(tmp_path: Path) -> None:
    torch.manual_seed(4)
    e, h, i, n = 8, 32, 24, 3
    t: dict[str, torch.Tensor] = {
        "embed.weight": torch.randn(16, h),
        "head.weight": torch.randn(16, h),
        "norm.weight": torch.ones(h),
    }
    for L in range(n):
        t[f"layers.{L}.attn.wq.weight"] = torch.randn(h, h)
        if L == 0:
            for w, shape in (("w1", (40, h)), ("w2", (h, 40)), ("w3", (40, h))):
                t[f"layers.{L}.ffn.{w}.weight"] = torch.randn(*shape)
            continue
        t[f"layers.{L}.ffn.gate.weight"] = torch.randn(e, h)
        t[f"layers.{L}.ffn.gate.bias"] = torch.randn(e)
        for j in range(e):
            for w, shape in (("w1", (i, h)), ("w2", (h, i)), ("w3", (i, h))):
                t[f"layers.{L}.ffn.experts.{j}.{w}.weight"] = torch.randn(*shape)
        for w, shape in (("w1", (i, h)), ("w2", (h, i)), ("w3", (i, h))):
            t[f"layers.{L}.ffn.shared_experts.{w}.weight"] = torch.randn(*shape)
    cfg = {
        "vocab_size": 16,
        "dim": h,
        "inter_dim": 40,
        "moe_inter_dim": i,
        "n_layers": n,
        "n_dense_layers": 1,
        "n_heads": 4,
        "n_routed_experts": e,
        "n_shared_experts": 1,
        "n_activated_experts": 2,
        "n_expert_groups": 2,
        "n_limited_groups": 1,
        "route_scale": 2.5,
        "score_func": "sigmoid",
    }
    folder = tmp_path / "dsnative"
    folder.mkdir()
    from safetensors.torch import save_file

    save_file(t, str(folder / "model0-mp1.safetensors"))
    (folder / "config.json").write_text(json.dumps(cfg))
    d = analyze_checkpoint(folder).to_dict()
    s = d["summary"]
    assert s["family"] == "deepseek-native"
    assert s["stacks"] == [{"name": "", "moe_layers": [1, 2], "dense_layers": [0], "mtp_layers": []}]
    assert (s["num_experts"], s["top_k"], s["shared_experts"], s["score_function"]) == (8, 2, 1, "sigmoid")
    assert (s["n_group"], s["topk_group"], s["routed_scaling_factor"]) == (2, 1, 2.5)
    assert d["layers"][0]["selection_bias_tensor"] == "layers.1.ffn.gate.bias"
    assert d["layers"][0]["router_bias_tensor"] is None and d["layers"][0]["bias"]["kind"] == "selection"
    total = sum(v.numel() for k, v in t.items() if not k.endswith("gate.bias"))
    assert s["total_params"] == total
    assert s["active_params"] == total - 2 * (e - 2) * 3 * i * h
    assert s["embedding_params"] == 16 * h  # embed.weight, DeepSeek's own name for it
    assert s["warnings"] == []
    spec = router_specs(folder)[0]
    assert spec.selection_bias == "layers.1.ffn.gate.bias" and spec.logit_bias is None


def test_mtp_layer_reported_apart(ckpt: Factory, tmp_path: Path) -> None:
    built = ckpt("deepseek_v3")
    sd = load_file(str(built.path / "model.safetensors"))
    cfg = _config(built.path)
    mtp = {
        k.replace("model.layers.2.", "model.layers.3."): v.clone() for k, v in sd.items() if ".layers.2." in k
    }
    mtp.update(
        {
            "model.layers.3.enorm.weight": torch.ones(32),
            "model.layers.3.hnorm.weight": torch.ones(32),
            "model.layers.3.eh_proj.weight": torch.randn(32, 64),
            "model.layers.3.shared_head.norm.weight": torch.ones(32),
        }
    )
    path = write_checkpoint(tmp_path / "mtp", {**sd, **mtp}, cfg)
    d = analyze_checkpoint(path).to_dict()
    s = d["summary"]
    assert s["mtp_layers"] == 1 and s["stacks"][0]["mtp_layers"] == [3]
    assert s["total_params"] == built.total and s["active_params"] == built.active
    assert s["mtp_params"] == sum(
        v.numel() for k, v in mtp.items() if not k.endswith("e_score_correction_bias")
    )
    assert s["moe_layers"] == 2
    mtp_layers = [x for x in d["layers"] if x["mtp"]]
    assert [x["layer"] for x in mtp_layers] == [3]
    assert not any("multi-token" in n for n in s["notes"])


def test_megatron_sequential_mlp_names(tmp_path: Path) -> None:
    torch.manual_seed(5)
    e, h, f = 4, 32, 24
    t: dict[str, torch.Tensor] = {
        "embedding.word_embeddings.weight": torch.randn(16, h),
        "output_layer.weight": torch.randn(16, h),
    }
    for L in range(2):
        p = f"decoder.layers.{L}.mlp."
        t[p + "router.weight"] = torch.randn(e, h)
        t[p + "router.expert_bias"] = torch.zeros(e)
        for j in range(e):
            t[p + f"experts.local_experts.{j}.linear_fc1.weight"] = torch.randn(2 * f, h)
            t[p + f"experts.local_experts.{j}.linear_fc2.weight"] = torch.randn(h, f)
        t[p + "shared_experts.linear_fc1.weight"] = torch.randn(2 * f, h)
        t[p + "shared_experts.linear_fc2.weight"] = torch.randn(h, f)
        t[f"decoder.layers.{L}.pre_mlp_layernorm.weight"] = torch.ones(h)
    cfg = {
        "num_layers": 2,
        "hidden_size": h,
        "num_moe_experts": e,
        "moe_router_topk": 2,
        "moe_ffn_hidden_size": f,
        "moe_router_score_function": "sigmoid",
        "moe_router_enable_expert_bias": True,
    }
    path = write_checkpoint(tmp_path / "megatron", t, cfg)
    d = analyze_checkpoint(path).to_dict()
    s = d["summary"]
    assert s["family"] == "megatron" and s["moe_layers"] == 2 and s["num_experts"] == e and s["top_k"] == 2
    assert s["score_function"] == "sigmoid" and s["selection_bias"] is True and s["shared_experts"] == 1
    assert s["expert_intermediate_size"] == f
    assert d["layers"][0]["selection_bias_tensor"] == "decoder.layers.0.mlp.router.expert_bias"


def test_no_config_guesses_from_names(ckpt: Factory, tmp_path: Path) -> None:
    built = ckpt("mixtral")
    sd = load_file(str(built.path / "model.safetensors"))
    path = write_checkpoint(tmp_path / "noconf", sd, None) / "model.safetensors"
    d = analyze_checkpoint(path, weights=False).to_dict()
    s = d["summary"]
    assert s["family"] == "mixtral-like" and s["family_source"] == "tensor names"
    assert s["num_experts"] == 4 and s["top_k"] is None and s["active_params"] is None
    assert s["total_params"] == built.total
    assert any("top-k" in w for w in s["warnings"])
    assert d["meta"]["config"] is None


@pytest.mark.parametrize("e_cfg", [8])
def test_config_tensor_disagreement_is_a_warning(ckpt: Factory, tmp_path: Path, e_cfg: int) -> None:
    built = ckpt("qwen2_moe")
    sd = load_file(str(built.path / "model.safetensors"))
    cfg = _config(built.path)
    cfg["num_experts"] = e_cfg
    cfg["mlp_only_layers"] = []
    cfg["moe_intermediate_size"] = 99
    path = write_checkpoint(tmp_path / "disagree", sd, cfg)
    s = analyze_checkpoint(path, weights=False).to_dict()["summary"]
    assert s["num_experts"] == 4  # tensors win
    joined = " | ".join(s["warnings"])
    assert "config says 8 experts" in joined
    assert "dense-layer rule disagrees" in joined and "1 (MoE by config, dense in tensors)" in joined
    assert "intermediate size 99" in joined
    assert s["total_params"] == built.total
    # a config hidden size the tensors contradict: the routers' width wins, and sizes follow from it
    truth = analyze_checkpoint(built.path, weights=False).to_dict()["summary"]
    cfg["hidden_size"] = 2 * truth["hidden_size"]
    s = analyze_checkpoint(write_checkpoint(tmp_path / "hidden", sd, cfg), weights=False).to_dict()["summary"]
    assert (s["hidden_size"], s["expert_intermediate_size"]) == (
        truth["hidden_size"],
        truth["expert_intermediate_size"],
    )
    assert any(f"config hidden size {cfg['hidden_size']} differs" in w for w in s["warnings"])


def test_openai_original_gpt_oss_names_read_like_transformers(tmp_path: Path) -> None:
    """OpenAI's original release (block.L.mlp.mlp1_weight.blocks ..., config num_experts and
    experts_per_token, no model_type) gives the same figures as the transformers-named MXFP4 checkpoint."""
    torch.manual_seed(4)
    e, h, i = 4, 64, 32
    hf: dict[str, torch.Tensor] = {"model.embed_tokens.weight": torch.randn(16, h)}
    orig: dict[str, torch.Tensor] = {"embedding.weight": hf["model.embed_tokens.weight"]}
    for L in range(2):
        gu, dn = torch.randn(e, 2 * i, h), torch.randn(e, h, i)
        if L == 1:
            gu[2], dn[2] = gu[1], dn[1]
        (gb, gs), (db, ds) = mxfp4_quantise(gu), mxfp4_quantise(dn)
        router, bias, gub, dnb = torch.randn(e, h), torch.randn(e), torch.randn(e, 2 * i), torch.randn(e, h)
        p, o = f"model.layers.{L}.mlp.", f"block.{L}.mlp."
        same = {  # transformers' name -> OpenAI's original name, for the same tensor
            ("router.weight", "gate.weight"): router,
            ("router.bias", "gate.bias"): bias,
            ("experts.gate_up_proj_blocks", "mlp1_weight.blocks"): gb,
            ("experts.gate_up_proj_scales", "mlp1_weight.scales"): gs,
            ("experts.gate_up_proj_bias", "mlp1_bias"): gub,
            ("experts.down_proj_blocks", "mlp2_weight.blocks"): db,
            ("experts.down_proj_scales", "mlp2_weight.scales"): ds,
            ("experts.down_proj_bias", "mlp2_bias"): dnb,
        }
        hf.update({p + a: t for (a, _), t in same.items()})
        orig.update({o + b: t for (_, b), t in same.items()})
    base = {"hidden_size": h, "intermediate_size": i, "num_hidden_layers": 2}
    hf_cfg = {"model_type": "gpt_oss", "num_local_experts": e, "num_experts_per_tok": 2, **base}
    want = analyze_checkpoint(write_checkpoint(tmp_path / "hf", hf, hf_cfg)).to_dict()
    got_ckpt = analyze_checkpoint(
        write_checkpoint(
            tmp_path / "orig", orig, {"num_experts": e, "experts_per_token": 2, "swiglu_limit": 7.0, **base}
        )
    )
    got = got_ckpt.to_dict()
    assert any("OpenAI's original GPT-OSS names" in w for w in got["summary"]["warnings"])
    assert got["summary"]["family"] == want["summary"]["family"]
    assert got["summary"]["score_function"] == want["summary"]["score_function"] == "topk_softmax"
    for key in ("total_params", "expert_params", "active_params", "num_experts", "top_k"):
        assert got["summary"][key] == want["summary"][key], key
    for a, b in zip(got["layers"], want["layers"], strict=True):
        assert (a["layer"], a["redundant_pairs"], a["router_norms"], a["quantization"]) == (
            b["layer"],
            b["redundant_pairs"],
            b["router_norms"],
            b["quantization"],
        )
        assert a["expert_intermediate_size"] == b["expert_intermediate_size"] == i
    assert got["layers"][1]["redundant_pairs"][0][:2] == [1, 2]


@pytest.mark.parametrize("sample", [1.0, 0.5])
def test_fp8_per_row_scales(ckpt: Factory, tmp_path: Path, sample: float) -> None:
    """FP8 experts with one scale per output row (a 1-D ``weight_scale``, channel-wise quantisation):
    each row read (also a sampled row range that starts mid-tensor) uses its own scale, so the expert
    norms are those of ``q.float() * scale[:, None]``."""
    built = ckpt("deepseek_v3")
    sd = load_file(str(built.path / "model.safetensors"))
    cfg = _config(built.path)
    cfg["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic"}
    rx = re.compile(r"\.layers\.2\.mlp\.experts\.(\d+)\.(gate|up|down)_proj\.weight$")
    squares: dict[int, float] = {}
    for name in [n for n in sd if rx.search(n)]:
        w = sd[name]
        s = w.abs().amax(dim=1).clamp_min(1e-12) / 448.0 * torch.linspace(0.5, 2.0, w.shape[0])
        q = (w / s[:, None]).clamp(-448, 448).to(torch.float8_e4m3fn)
        sd[name], sd[name[: -len("weight")] + "weight_scale"] = q, s
        e = int(rx.search(name).group(1))  # type: ignore[union-attr]
        squares[e] = squares.get(e, 0.0) + float((q.float().double() * s[:, None].double()).pow(2).sum())
    path = write_checkpoint(tmp_path / "fp8rows", sd, cfg)
    layer2 = next(x for x in analyze_checkpoint(path, sample=sample).to_dict()["layers"] if x["layer"] == 2)
    assert layer2["weights_note"] is None
    ref = [squares[e] ** 0.5 for e in sorted(squares)]
    if sample == 1.0:
        assert layer2["expert_norms"] == pytest.approx(ref, rel=1e-5)
    else:  # norms estimated from the sampled rows: near, not equal (every row's own scale still applies)
        assert layer2["expert_norms"] == pytest.approx(ref, rel=0.3)


def test_nan_in_a_scale_or_the_bias_fails_the_check(ckpt: Factory, tmp_path: Path) -> None:
    """A NaN FP8 scale on a duplicate expert used to hide the pair (its cosine is NaN) and pass; a NaN in
    the selection bias made the bias rule skip as if there were no bias. Both are now named and failed."""
    from moediag.api import check

    built = ckpt("deepseek_v3")
    sd = load_file(str(built.path / "model.safetensors"))
    cfg = _config(built.path)
    cfg["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [8, 16]}
    rx = re.compile(r"\.layers\.2\.mlp\.experts\.(\d+)\.(gate|up|down)_proj\.weight$")
    names = [n for n in sd if rx.search(n)]
    for name in names:
        if ".experts.6." in name:
            sd[name] = sd[name.replace(".experts.6.", ".experts.1.")].clone()
    for name in names:
        q, s = fp8_quantise(sd[name], (8, 16))
        if ".experts.6.up_proj" in name:
            s[0, 0] = float("nan")
        sd[name], sd[name[: -len("weight")] + "weight_scale_inv"] = q, s
    bias = next(n for n in sd if n.endswith("layers.2.mlp.gate.e_score_correction_bias"))
    sd[bias] = sd[bias].clone()
    sd[bias][3] = float("nan")
    path = write_checkpoint(tmp_path / "nan", sd, cfg)
    layer2 = next(x for x in analyze_checkpoint(path, sample=1.0).to_dict()["layers"] if x["layer"] == 2)
    assert layer2["nonfinite"] == {"selection_bias": 1, "experts": [6], "total": 2}
    assert (
        layer2["expert_norms"][6] is None
        and layer2["bias"]["argmax"] != 3
        and layer2["bias"]["max"] is not None
    )
    report = check(path, layers="2", max_bias_spread=100.0)
    assert report.exit_code == 1
    by_rule = {r["rule"]: r for r in report.to_dict()["rules"]}
    assert by_rule["max_nonfinite"]["status"] == "fail" and by_rule["max_bias_spread"]["status"] == "pass"


def _fp8_layer2(ckpt: Factory, tmp_path: Path, name: str, block: list[int] | None, edit: Any) -> Path:
    """The tiny DeepSeek-V3 with layer 2's experts in FP8 (8x16 blocks), ``edit(sd)`` applied, saved."""
    built = ckpt("deepseek_v3")
    sd = load_file(str(built.path / "model.safetensors"))
    cfg = _config(built.path)
    cfg["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3"}
    if block:
        cfg["quantization_config"]["weight_block_size"] = block
    rx = re.compile(r"\.layers\.2\.mlp\.experts\.(\d+)\.(gate|up|down)_proj\.weight$")
    for n in [n for n in sd if rx.search(n)]:
        sd[n], sd[n[: -len("weight")] + "weight_scale_inv"] = fp8_quantise(sd[n], (8, 16))
    edit(sd)
    return write_checkpoint(tmp_path / name, sd, cfg)


@pytest.mark.parametrize(
    ("case", "block", "message"),
    [
        ("one_scale_missing", [8, 16], "1 of 8 experts' FP8 up_proj weights have no scale tensor"),
        ("every_scale_missing", [8, 16], "8 of 8 experts' FP8"),
        ("scale_shape", [8, 16], r"does not fit .* in blocks of 8x16 \(that needs"),
        ("config_block", [16, 16], r"in blocks of 16x16"),
        ("no_config_block", None, None),  # the block the scale's shape implies: reads, no error
        ("scalar_scale", [8, 16], None),  # one scale for a whole weight fits any block size ([] or [1, 1])
        ("int_scale", [8, 16], "scale .* is I32; expected F32"),
        ("expert_shape", [8, 16], r"expert 3's down_proj is \[.*\], the others'"),
    ],
)
def test_fp8_scales_that_contradict_their_weights_are_bad_input(
    ckpt: Factory, tmp_path: Path, case: str, block: list[int] | None, message: str | None
) -> None:
    """Scales missing for some experts (or for all, when the config quantises to FP8), or shaped for
    another block size than the config's: the unscaled or misscaled codes are not the weights, so the
    weights pass stops with one error naming the tensor (exit 2), as for a missing projection."""
    from moediag.errors import InvalidInputError

    def edit(sd: dict[str, torch.Tensor]) -> None:
        scales = sorted(n for n in sd if ".layers.2." in n and n.endswith("weight_scale_inv"))
        if case == "one_scale_missing":
            del sd[next(n for n in scales if ".experts.3.up_proj" in n)]
        elif case == "every_scale_missing":
            for n in scales:
                del sd[n]
        elif case == "scale_shape":
            n = next(n for n in scales if ".experts.3.up_proj" in n)
            sd[n] = torch.ones(sd[n].shape[0] + 1, sd[n].shape[1])
        elif case == "scalar_scale":
            sd[next(n for n in scales if ".experts.3.up_proj" in n)] = torch.tensor(0.01)
            sd[next(n for n in scales if ".experts.4.up_proj" in n)] = torch.full((1, 1), 0.01)
        elif case == "int_scale":
            n = next(n for n in scales if ".experts.3.up_proj" in n)
            sd[n] = sd[n].to(torch.int32)
        elif case == "expert_shape":
            n = next(
                n for n in sd if ".layers.2." in n and ".experts.3.down_proj.weight" in n and "scale" not in n
            )
            sd[n] = sd[n][:, :-16].contiguous()
            sd[n[: -len("weight")] + "weight_scale_inv"] = torch.ones(
                sd[n].shape[0] // 8, sd[n].shape[1] // 16
            )

    path = _fp8_layer2(ckpt, tmp_path, case, block, edit)
    if message is None:
        layer2 = next(x for x in analyze_checkpoint(path).to_dict()["layers"] if x["layer"] == 2)
        assert layer2["weights_note"] is None and layer2["redundant_pairs"] is not None
        return
    with pytest.raises(InvalidInputError, match=message):
        analyze_checkpoint(path)
    assert analyze_checkpoint(path, weights=False).layers  # the structure still reads


def test_check_reads_every_row_with_sample_1(ckpt: Factory, tmp_path: Path) -> None:
    """A NaN in one expert row the 1/32 screen may not read: ``check --sample 1`` reads every row, so
    max_nonfinite sees it; ``--sample`` on a trace is a usage error."""
    from moediag.api import check
    from moediag.errors import UsageError

    built = ckpt("deepseek_v3")
    sd = load_file(str(built.path / "model.safetensors"))
    name = next(n for n in sd if n.endswith("layers.2.mlp.experts.3.up_proj.weight"))
    sd[name] = sd[name].clone()
    sd[name][-1, 0] = float("nan")  # the last row
    path = write_checkpoint(tmp_path / "nanrow", sd, _config(built.path))
    exact = check(path, sample=1.0, max_redundant_pairs="off")
    assert exact.exit_code == 1
    assert {r["rule"]: r["status"] for r in exact.to_dict()["rules"]}["max_nonfinite"] == "fail"
    with pytest.raises(UsageError, match="--sample applies to checkpoints"):
        check(Path(__file__).parents[2] / "sample_traces" / "healthy.safetensors", sample=1.0)
