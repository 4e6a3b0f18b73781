"""`record`: recorded logits equal transformers' own output_router_logits, family by family."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moediag.errors import InvalidInputError, UnsupportedLayoutError, UsageError
from moediag.record import byte_tokenizer, find_routers, record, windows
from moediag.routing import route
from moediag.trace import open_trace
from tests.record.conftest import CODE, FAMILIES, PROSE, VOCAB, build

EXPECTED = {
    "mixtral": ("softmax", [0, 1], 4, True),
    "qwen2_moe": ("softmax", [0, 1], 6, False),
    "olmoe": ("softmax", [0, 1], 8, False),
    "deepseek_v3": ("sigmoid", [1, 2], 8, True),
    "gpt_oss": ("topk_softmax", [0, 1], 4, None),
    "granitemoe": ("topk_softmax", [0, 1], 4, None),
}


def _read_all(path: Path) -> dict[str, torch.Tensor]:
    trace = open_trace(path)
    parts: dict[str, list[torch.Tensor]] = {}
    for chunk in trace.iter_chunks():
        for name in [f"tokens.{f}" for f in trace.token_fields]:
            parts.setdefault(name, []).append(chunk.token(name.split(".", 1)[1]))  # type: ignore[arg-type]
        for layer, info in trace.layers.items():
            for kind in info.kinds & {"router_logits", "topk_ids", "router_input"}:
                t = chunk.layer_tensor(layer, kind)
                if t is not None:
                    parts.setdefault(f"layers.{layer}.{kind}", []).append(t)
    return {k: torch.cat(v) for k, v in parts.items()}


@pytest.fixture(scope="module")
def recorded(model_dirs: dict[str, Path], texts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    out = {}
    root = tmp_path_factory.mktemp("traces")
    for name in FAMILIES:
        out[name] = record(
            model_dirs[name],
            [texts["prose"], texts["code"]],
            root / name,
            max_tokens=400,
            seq_len=48,
            batch_size=3,
            router_inputs=True,
            device="cpu",
        )
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_equal_output_router_logits(family: str, recorded, model_dirs) -> None:
    """Run every recorded sequence alone through the model; its own router logits match to 1e-5."""
    result = recorded[family]
    data = _read_all(result.path)
    model = build(family)
    seq = data["tokens.sequence_ids"]
    worst = 0.0
    for s in seq.unique().tolist():
        rows = torch.nonzero(seq == s).squeeze(1)
        ids = data["tokens.input_ids"][rows].long()[None]
        with torch.no_grad():
            out = model(input_ids=ids, output_router_logits=True)
        assert len(out.router_logits) == len(result.layers)
        for layer, theirs in zip(result.layers, out.router_logits, strict=True):
            ours = data[f"layers.{layer}.router_logits"][rows]
            assert ours.shape == theirs.shape
            worst = max(worst, (ours - theirs.float()).abs().max().item())
            ids_k = data[f"layers.{layer}.topk_ids"][rows]
            gate = find_routers(model)[result.layers.index(layer)].module
            _, _, expected = gate(data[f"layers.{layer}.router_input"][rows])
            assert torch.equal(ids_k.long().sort(-1).values, expected.long().sort(-1).values)
    assert worst <= 1e-5, f"{family}: max |recorded - output_router_logits| = {worst:.3g}"


@pytest.mark.parametrize("family", FAMILIES)
def test_metadata_per_family(family: str, recorded) -> None:
    score, layers, experts, norm = EXPECTED[family]
    result = recorded[family]
    trace = open_trace(result.path)
    assert result.layers == layers == sorted(trace.layers)
    assert result.logits_source == dict.fromkeys(layers, "output")
    for info in trace.layers.values():
        assert info.spec.score_function == score
        assert info.spec.num_experts == experts
        assert info.spec.top_k == 2
        assert info.spec.norm_topk_prob == norm
    assert trace.meta.domains == ["prose", "code"]
    assert trace.num_tokens == 400
    assert trace.meta.raw["tokenizer"] == "bytes"


def test_deepseek_v3_groups_bias_and_choice(recorded) -> None:
    """Groups and e_score_correction_bias go into the trace, and moediag's policy reproduces the choice."""
    trace = open_trace(recorded["deepseek_v3"].path)
    data = _read_all(recorded["deepseek_v3"].path)
    spec = trace.layers[1].spec
    assert (spec.n_group, spec.topk_group) == (2, 1)
    assert json.loads(trace.meta.raw["routed_scaling_factor"]) == 2.5
    for layer in (1, 2):
        bias = trace.selection_bias(layer)
        assert bias is not None
        assert torch.allclose(bias, torch.linspace(-0.3, 0.3, 8))
        r = route(data[f"layers.{layer}.router_logits"], spec=trace.layers[layer].spec, bias=bias)
        assert torch.equal(r.ids.sort(-1).values, data[f"layers.{layer}.topk_ids"].long().sort(-1).values)


def test_token_fields_are_genuine(recorded, texts) -> None:
    """Byte fallback ids, next-token targets across window edges, per-token loss and correct."""
    result = recorded["mixtral"]
    data = _read_all(result.path)
    model = build("mixtral")
    prose = torch.tensor(list(PROSE.encode()))
    code = torch.tensor(list(CODE.encode()))
    dom = data["tokens.domain"]
    assert torch.equal(data["tokens.input_ids"][dom == 0].long(), prose[:200])
    assert torch.equal(data["tokens.input_ids"][dom == 1].long(), code[:200])
    assert data["tokens.positions"].max().item() == 47
    # loss of the last token of the first window uses the next window's first token as its target
    seq = data["tokens.sequence_ids"]
    rows = torch.nonzero(seq == 0).squeeze(1)
    with torch.no_grad():
        logits = model(input_ids=prose[None, :48]).logits[0]
    target = prose[1:49]
    loss = torch.nn.functional.cross_entropy(logits, target, reduction="none")
    assert torch.allclose(data["tokens.loss"][rows], loss, atol=1e-5)
    assert torch.equal(data["tokens.correct"][rows].bool(), logits.argmax(-1) == target)


def test_router_inputs_optional(model_dirs, texts, tmp_path: Path) -> None:
    r = record(model_dirs["olmoe"], texts["prose"], tmp_path / "t", max_tokens=50, seq_len=16)
    trace = open_trace(r.path)
    assert all("router_input" not in info.kinds for info in trace.layers.values())
    assert trace.meta.domains == ["prose"]


def test_folder_tokenizer_is_used(model_dirs, texts, tmp_path: Path) -> None:
    """A folder with tokenizer files is tokenised with that tokenizer (built offline here)."""
    import shutil

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted(set(PROSE.replace(".", " ").replace(",", " ").split()))
    vocab = {"<unk>": 0, **{w: i + 1 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<unk>")
    folder = tmp_path / "mixtral-tok"
    shutil.copytree(model_dirs["mixtral"], folder)
    fast.save_pretrained(folder)
    r = record(folder, texts["prose"], tmp_path / "t", seq_len=16, max_tokens=40)
    data = _read_all(r.path)
    assert r.tokenizer != "bytes"
    expected = fast(PROSE, add_special_tokens=False).input_ids[:40]
    assert data["tokens.input_ids"].tolist() == expected


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 80),
    seq_len=st.integers(2, 20),
    bos=st.booleans(),
    cap=st.one_of(st.none(), st.integers(1, 90)),
)
def test_windows_cover_the_text(n: int, seq_len: int, bos: bool, cap: int | None) -> None:
    ids = torch.arange(100, 100 + n)
    ws = list(windows(ids, seq_len, bos_id=7 if bos else None, max_tokens=cap))
    total = sum(w.input_ids.shape[0] for w in ws)
    if cap is not None:
        assert total <= cap
    text_inputs = torch.cat([w.input_ids[1:] if bos else w.input_ids for w in ws]) if ws else ids[:0]
    assert torch.equal(text_inputs, ids[: text_inputs.shape[0]])  # in order, none skipped or repeated
    for w in ws:
        assert 1 <= w.input_ids.shape[0] <= seq_len
        assert w.input_ids.shape == w.targets.shape
        if bos:
            assert w.input_ids[0] == 7
            assert torch.equal(w.targets, ids[w.targets[0] - 100 :][: w.targets.shape[0]])
            assert torch.equal(w.targets[1:], w.input_ids[1:] + 1)
        else:
            assert torch.equal(w.targets, w.input_ids + 1)  # the next token, also at the window's end
    if cap is None and n >= 2:
        assert text_inputs.shape[0] == n - 1  # every token but the last is an input


def test_byte_fallback_wraps_modulo_vocab() -> None:
    tok = byte_tokenizer(100)
    assert tok.encode("é").tolist() == [0xC3 % 100, 0xA9 % 100]
    assert byte_tokenizer(VOCAB).encode("ab").tolist() == [97, 98]


def test_no_moe_layers_is_an_error_and_leaves_nothing(model_dirs, texts, tmp_path: Path) -> None:
    out = tmp_path / "trace"
    with pytest.raises(UnsupportedLayoutError, match="no MoE router"):
        record(model_dirs["dense"], texts["prose"], out)
    assert list(tmp_path.iterdir()) == []


def test_bad_inputs(model_dirs, texts, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="model folder not found"):
        record(tmp_path / "nope", texts["prose"], tmp_path / "t")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInputError, match="no config.json"):
        record(tmp_path / "empty", texts["prose"], tmp_path / "t")
    with pytest.raises(InvalidInputError, match="text file not found"):
        record(model_dirs["mixtral"], tmp_path / "missing.txt", tmp_path / "t")
    (tmp_path / "one.txt").write_text("a")
    with pytest.raises(InvalidInputError, match="too short"):
        record(model_dirs["mixtral"], tmp_path / "one.txt", tmp_path / "t")
    with pytest.raises(UsageError, match="seq-len"):
        record(model_dirs["mixtral"], texts["prose"], tmp_path / "t", seq_len=1)
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="CUDA is not available"):
            record(model_dirs["mixtral"], texts["prose"], tmp_path / "t", device="cuda")
    assert not (tmp_path / "t").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".t.")]
