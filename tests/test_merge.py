"""Adapter merging: the tensor math by hand, the weight changes in delta space, PEFT in factor space."""

from __future__ import annotations

import json

import pytest
import torch

from clues.merge import combine, merge_adapters, merge_lora_state_dicts
from clues.merge.adapters import load_adapter
from clues.errors import CluesError

from conftest import make_tiny_llama

TARGETS = ["q_proj", "v_proj"]


def lora_config(r=4, alpha=8, targets=TARGETS):
    from peft import LoraConfig

    # init_lora_weights=False: random A *and* B, so every adapter has a non-zero weight change.
    return LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), init_lora_weights=False)


def save_adapter(tokenizer, folder, seed, r=4, alpha=8, targets=TARGETS):
    """A random PEFT LoRA adapter on the tiny Llama, saved by PEFT itself; returns the folder."""
    from peft import get_peft_model

    base = make_tiny_llama(tokenizer)  # seeds torch itself, so seed the LoRA init after it
    torch.manual_seed(seed)
    model = get_peft_model(base, lora_config(r, alpha, targets))
    model.save_pretrained(folder)
    return folder


def deltas(state, scaling):
    """Module prefix -> scaling * B @ A of a LoRA state dict."""
    out = {}
    for key, a in state.items():
        if key.endswith("lora_A.weight"):
            prefix = key[: -len("lora_A.weight")]
            out[prefix] = scaling * state[prefix + "lora_B.weight"].double() @ a.double()
    return out


# --- tensor math -------------------------------------------------------------------------------


def test_ties_matches_a_hand_computation():
    tasks = [
        torch.tensor([1.0, -2.0, 0.5, 3.0]),
        torch.tensor([-0.5, -1.0, 2.0, 0.1]),
        torch.tensor([0.8, 0.2, -3.0, 1.0]),
    ]
    # density 0.5 keeps 2 of 4 entries: [0,-2,0,3], [0,-1,2,0], [0,0,-3,1]; sums [0,-3,-1,4]
    # elect signs [+,-,-,+]; disjoint means: nobody, (-2-1)/2, -3 (the +2 disagrees), (3+1)/2.
    merged = combine(tasks, [1.0, 1.0, 1.0], "ties", density=0.5)
    assert torch.equal(merged, torch.tensor([0.0, -1.5, -3.0, 2.0]))
    # Weights scale the agreeing entries but do not vote (TIES paper, PEFT): with weights [1, 2, 0.5]
    # the weighted sum of entry 2 would be 2*2 - 0.5*3 > 0, yet the elected sign stays "-".
    weighted = combine(tasks, [1.0, 2.0, 0.5], "ties", density=0.5)
    assert torch.equal(weighted, torch.tensor([0.0, (-2.0 - 2.0) / 2, 0.5 * -3.0, (3.0 + 0.5) / 2]))
    assert torch.equal(combine(tasks, [1.0, 2.0, 0.5], "linear"), tasks[0] + 2 * tasks[1] + 0.5 * tasks[2])


def test_dare_is_seeded_and_unbiased():
    torch.manual_seed(0)
    task = torch.randn(64)
    first = combine([task], [1.0], "dare_linear", 0.3, torch.Generator().manual_seed(5))
    assert torch.equal(first, combine([task], [1.0], "dare_linear", 0.3, torch.Generator().manual_seed(5)))
    assert not torch.equal(first, combine([task], [1.0], "dare_linear", 0.3, torch.Generator().manual_seed(6)))
    kept = first != 0
    assert torch.allclose(first[kept], task[kept] / 0.3)  # survivors rescaled by 1/density
    generator = torch.Generator().manual_seed(0)
    draws = torch.stack([combine([task], [1.0], "dare_linear", 0.3, generator) for _ in range(3000)])
    # each entry's mean has standard error |t| * sqrt(0.7 / 0.3) / sqrt(3000) ~ 0.028 |t|
    assert torch.all((draws.mean(0) - task).abs() <= 0.15 * task.abs() + 1e-6)


def test_dare_merge_of_state_dicts_is_reproducible(tiny_tokenizer, tmp_path):
    states = [load_adapter(save_adapter(tiny_tokenizer, tmp_path / f"s{i}", seed=i)).tensors for i in range(2)]

    def run(seed, method):
        return merge_lora_state_dicts(states, [2.0, 2.0], method, "delta", density=0.5, seed=seed)[0]

    for method in ("dare_linear", "dare_ties"):
        a, b, c = run(0, method), run(0, method), run(1, method)
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert any(not torch.equal(a[k], c[k]) for k in a)


# --- one adapter gives back itself ---------------------------------------------------------------


@pytest.mark.parametrize(
    "method,space,density,delta_rank",
    [
        ("linear", "factor", 0.2, None),
        ("linear", "delta", 0.2, None),
        ("linear", "delta", 0.2, "concat"),
        ("ties", "factor", 1.0, None),
        ("ties", "delta", 1.0, None),
        ("ties", "factor", 0.2, None),  # a single adapter is never trimmed (PEFT's rule)
    ],
)
def test_one_adapter_with_weight_one_gives_back_its_weight_change(
    tiny_tokenizer, tmp_path, method, space, density, delta_rank
):
    folder = save_adapter(tiny_tokenizer, tmp_path / "silo", seed=1, r=4, alpha=8)
    source = load_adapter(folder)
    out = merge_adapters([folder], tmp_path / "merged", method, space, [1.0], density, delta_rank=delta_rank)
    merged = load_adapter(out)
    assert merged.scaling == 1.0
    want, got = deltas(source.tensors, source.scaling), deltas(merged.tensors, merged.scaling)
    assert want.keys() == got.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], atol=1e-5, rtol=1e-4)


# --- delta space: the real weight change ---------------------------------------------------------


def test_linear_delta_merge_is_the_weighted_sum_of_weight_changes(tiny_tokenizer, tmp_path):
    folders = [
        save_adapter(tiny_tokenizer, tmp_path / "a", seed=1, alpha=8),
        save_adapter(tiny_tokenizer, tmp_path / "b", seed=2, alpha=16),
    ]
    adapters = [load_adapter(f) for f in folders]
    weights = [0.7, -1.3]
    want = {}
    for adapter, w in zip(adapters, weights):
        for key, d in deltas(adapter.tensors, adapter.scaling).items():
            want[key] = want.get(key, 0) + w * d

    for delta_rank, rank in (("concat", 8), (8, 8)):  # rank 2r holds the sum of two rank-r changes
        out = merge_adapters(folders, tmp_path / "m", "linear", "delta", weights, delta_rank=delta_rank)
        merged = load_adapter(out)
        assert merged.rank == rank
        got = deltas(merged.tensors, merged.scaling)
        for key in want:
            torch.testing.assert_close(got[key], want[key], atol=1e-5, rtol=1e-4)

    # Factor space is not this merge: (sum b_i B_i) @ (sum a_i A_i) adds cross terms B_i @ A_j.
    factor = load_adapter(merge_adapters(folders, tmp_path / "f", "linear", "factor", weights))
    got = deltas(factor.tensors, factor.scaling)
    assert all((got[key] - want[key]).abs().max() > 1e-2 * want[key].abs().max() for key in want)



def _ties_by_hand(changes, weights, density, keep_masks=None):
    """TIES of flat float64 weight changes, entry by entry in plain Python: trim each change to its
    ``int(density * n)`` largest magnitudes (or, for DARE, keep ``keep_masks`` and rescale by
    1/density), elect the sign of the sum, average the weighted entries that agree."""
    n = len(changes[0])
    kept = []
    for i, change in enumerate(changes):
        values = change.tolist()
        if keep_masks is None:
            top = set(sorted(range(n), key=lambda j: -abs(values[j]))[: int(density * n)])
            kept.append([values[j] if j in top else 0.0 for j in range(n)])
        else:
            kept.append([values[j] / density if keep_masks[i][j] else 0.0 for j in range(n)])
    merged = []
    for j in range(n):
        column = [row[j] for row in kept]
        sign = 1.0 if sum(column) >= 0 else -1.0
        agree = [(w * v) for w, v in zip(weights, column) if v != 0 and (v > 0) == (sign > 0)]
        merged.append(sum(agree) / len(agree) if agree else 0.0)
    return torch.tensor(merged, dtype=torch.float64)


@pytest.mark.parametrize("method", ["ties", "dare_ties"])
def test_delta_space_ties_and_dare_of_three_adapters_match_a_hand_computation(tiny_tokenizer, tmp_path, method):
    """Three adapters of different scalings and weights, merged on their weight changes. The SVD gets
    the full rank of the matrices (32), so the merged B @ A is the merged change exactly. DARE's draws
    follow the documented contract (one generator seeded ``seed``, modules in sorted order, adapters
    in order); everything else is recomputed here."""
    folders = [save_adapter(tiny_tokenizer, tmp_path / f"a{i}", seed=i + 1, alpha=alpha)
               for i, alpha in enumerate((8, 16, 4))]
    adapters = [load_adapter(f) for f in folders]
    weights, density = [1.0, 0.6, 1.7], 0.3
    merged = load_adapter(merge_adapters(folders, tmp_path / "m", method, "delta", weights, density, seed=3,
                                         delta_rank=32))
    got = deltas(merged.tensors, merged.scaling)
    changes = [deltas(a.tensors, a.scaling) for a in adapters]
    generator = torch.Generator().manual_seed(3)
    for key in sorted(changes[0]):
        shape = changes[0][key].shape
        flat = [c[key].reshape(-1) for c in changes]
        masks = None
        if method == "dare_ties":
            masks = [torch.bernoulli(torch.full(shape, density), generator=generator).reshape(-1).bool().tolist()
                     for _ in flat]
        want = _ties_by_hand(flat, weights, density, masks).reshape(shape)
        torch.testing.assert_close(got[key], want, atol=1e-5, rtol=1e-4)


def test_svd_at_the_adapters_rank_is_exact_when_the_sum_fits(tiny_tokenizer, tmp_path):
    # Two rank-4 adapters that each use only 2 of their 4 rank slots: the sum has rank <= 4.
    states, scalings = [], []
    for i in range(2):
        adapter = load_adapter(save_adapter(tiny_tokenizer, tmp_path / f"s{i}", seed=i))
        state = {k: v.clone() for k, v in adapter.tensors.items()}
        for key in state:
            if key.endswith("lora_A.weight"):
                state[key][2:] = 0
        states.append(state)
        scalings.append(adapter.scaling)
    merged, rank = merge_lora_state_dicts(states, scalings, "linear", "delta", [1.0, 0.5])
    assert rank == 4
    want = {k: deltas(states[0], scalings[0])[k] + 0.5 * deltas(states[1], scalings[1])[k] for k in deltas(merged, 1)}
    for key, got in deltas(merged, 1.0).items():
        torch.testing.assert_close(got, want[key], atol=1e-5, rtol=1e-4)


def test_merged_folder_loads_in_peft_and_adds_the_merged_weight_change(tiny_tokenizer, tmp_path):
    from peft import PeftModel

    folders = [save_adapter(tiny_tokenizer, tmp_path / f"s{i}", seed=i, alpha=4 * (i + 1)) for i in range(3)]
    weights = [1.0, 0.5, 0.25]
    out = merge_adapters(folders, tmp_path / "merged", "linear", "delta", weights, delta_rank="concat")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp leftovers
    assert json.loads((out / "clues_merge.json").read_text())["space"] == "delta"

    expected = make_tiny_llama(tiny_tokenizer)
    with torch.no_grad():
        for folder, w in zip(folders, weights):
            adapter = load_adapter(folder)
            for prefix, d in deltas(adapter.tensors, adapter.scaling).items():
                module = expected.get_submodule(prefix.removeprefix("base_model.model.").rstrip("."))
                module.weight += (w * d).to(module.weight.dtype)
    peft_model = PeftModel.from_pretrained(make_tiny_llama(tiny_tokenizer), out)
    peft_model.eval()
    ids = torch.tensor([tiny_tokenizer.encode("The patient reports chest pain.")])
    with torch.no_grad():
        torch.testing.assert_close(peft_model(ids).logits, expected(ids).logits, atol=1e-4, rtol=1e-4)

    # Rewriting replaces the folder whole.
    merge_adapters(folders[:2], out, "ties", "factor")
    assert load_adapter(out).rank == 4
    assert json.loads((out / "clues_merge.json").read_text())["method"] == "ties"


# --- factor space: exactly PEFT's add_weighted_adapter -------------------------------------------


@pytest.mark.parametrize(
    "combination,weights,density",
    [("linear", [0.7, 1.3], None), ("linear", [1.0, -0.5], None), ("ties", [1.0, 1.0], 0.2), ("ties", [0.7, 1.3], 0.5)],
)
def test_factor_space_matches_peft_add_weighted_adapter(tiny_tokenizer, tmp_path, combination, weights, density):
    from peft import get_peft_model
    from peft.utils import get_peft_model_state_dict

    base = make_tiny_llama(tiny_tokenizer)
    torch.manual_seed(3)
    model = get_peft_model(base, lora_config(alpha=8), adapter_name="one")
    model.add_adapter("two", lora_config(alpha=16))
    model.add_weighted_adapter(["one", "two"], weights, "m", combination_type=combination, density=density)
    expected = get_peft_model_state_dict(model, adapter_name="m")

    model.save_pretrained(tmp_path, selected_adapters=["one", "two"])  # PEFT writes tmp_path/one, /two
    kwargs = {"density": density} if density is not None else {}
    out = merge_adapters([tmp_path / "one", tmp_path / "two"], tmp_path / "m", combination, "factor", weights, **kwargs)
    merged = load_adapter(out)
    assert merged.rank == model.peft_config["m"].r and merged.scaling == 1.0
    assert merged.tensors.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(merged.tensors[key], value, atol=1e-6, rtol=1e-5)


# --- refusals ------------------------------------------------------------------------------------


def test_incompatible_adapters_are_refused_with_a_clear_error(tiny_tokenizer, tmp_path):
    base = save_adapter(tiny_tokenizer, tmp_path / "base", seed=0)
    other_rank = save_adapter(tiny_tokenizer, tmp_path / "r8", seed=1, r=8)
    other_targets = save_adapter(tiny_tokenizer, tmp_path / "qk", seed=2, targets=["q_proj", "k_proj"])
    with pytest.raises(CluesError, match="rank"):
        merge_adapters([base, other_rank], tmp_path / "out")
    with pytest.raises(CluesError, match="target modules"):
        merge_adapters([base, other_targets], tmp_path / "out")

    other_base = save_adapter(tiny_tokenizer, tmp_path / "other-base", seed=3)
    config = json.loads((other_base / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "some/other-model"
    (other_base / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(CluesError, match="base model"):
        merge_adapters([base, other_base], tmp_path / "out")

    with pytest.raises(CluesError, match="not a PEFT adapter folder"):
        merge_adapters([base, tmp_path / "missing"], tmp_path / "out")
    with pytest.raises(CluesError, match="concat"):
        merge_adapters([base, base], tmp_path / "out", "ties", "delta", delta_rank="concat")
    with pytest.raises(CluesError, match="method"):
        merge_adapters([base, base], tmp_path / "out", "average")
    with pytest.raises(CluesError, match="weights"):
        merge_adapters([base, base], tmp_path / "out", "linear", weights=[1.0])
    with pytest.raises(CluesError, match="density"):
        merge_adapters([base, base], tmp_path / "out", "ties", density=0.0)
    assert not (tmp_path / "out").exists()
