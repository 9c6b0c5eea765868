"""The embedded tiny model bundle: it loads offline, its SAEs fit their sites, and it does IOI and
SVA on fresh held-out pairs (words it never saw in those tasks)."""

from __future__ import annotations

import json
import re
import time

import pytest
import torch

from featcirc.data import tasks
from featcirc.data import read_pairs, tokenize_pairs
from featcirc.metric import logit_diff
from featcirc.sites import Site, all_sites
from featcirc.models.tiny import (HELDOUT_FILES, TINY_DIR, TINY_SAE_DIR, heldout_path, heldout_vocab,
                           load_tiny_model)


@pytest.fixture(scope="module")
def model():
    return load_tiny_model()


def test_bundle_loads_offline_and_is_gpt2_style(model):
    cfg = model.cfg
    assert cfg.n_layers >= 4 and cfg.normalization_type == "LN" and cfg.act_fn == "gelu"
    assert cfg.positional_embedding_type == "standard" and cfg.default_prepend_bos
    assert cfg.d_vocab == len(model.tokenizer)
    assert not model.training
    # answers with a leading space are single tokens; prompts start with BOS
    for ans in (" is", " are", " Mary", " John", " has", " have"):
        assert model.to_tokens(ans, prepend_bos=False).shape == (1, 1), ans
    toks = model.to_tokens("When Mary and John went to the store, John gave a drink to")
    assert toks[0, 0].item() == model.tokenizer.bos_token_id
    assert model.tokenizer.unk_token_id not in toks[0].tolist()
    assert model.to_string(toks[0, 1:]) == "When Mary and John went to the store, John gave a drink to"


def test_load_is_fast():
    t = time.time()
    load_tiny_model()
    assert time.time() - t < 10


def test_every_site_has_an_sae_that_fits(model):
    from sae_lens import SAE

    dirs = sorted(p.name for p in TINY_SAE_DIR.iterdir() if p.is_dir())
    assert sorted(s.name for s in all_sites(model.cfg.n_layers)) == dirs
    hooks = {Site.parse(name).hook_name for name in dirs}
    acts: dict[str, list[torch.Tensor]] = {h: [] for h in hooks}
    for text in ("The authors near the desk are happy.", "Mary went to the park. Then Mary ate a cake.",
                 "When Mary and John went to the store, John gave a drink to Mary."):
        _, cache = model.run_with_cache(model.to_tokens(text), names_filter=lambda n: n in hooks)
        for h in hooks:
            acts[h].append(cache[h][0, 1:])  # BOS excluded
    for name in dirs:
        sae = SAE.load_from_disk(str(TINY_SAE_DIR / name))
        assert sae.cfg.d_in == model.cfg.d_model
        assert sae.cfg.metadata.hook_name == Site.parse(name).hook_name
        # the SAE reconstructs its site's activations well (FVE > 0.8) with a sparse code
        x = torch.cat(acts[sae.cfg.metadata.hook_name])
        with torch.no_grad():
            f = sae.encode(x)
            fve = 1 - ((x - sae.decode(f)) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
        assert fve > 0.8, (name, fve)
        assert 1 <= (f > 0).sum(-1).float().mean() <= 64


def test_heldout_split_is_disjoint_and_files_use_only_heldout_words():
    v = heldout_vocab()
    assert set(v["heldout_names"]).isdisjoint(v["train_names"])
    assert set(v["heldout_names"]) | set(v["train_names"]) == set(tasks.NAMES)
    assert set(map(tuple, v["heldout_nouns"])).isdisjoint(map(tuple, v["train_nouns"]))
    for kind in ("ABBA", "BABA"):
        assert set(v["heldout_templates"][kind]).isdisjoint(v["train_templates"][kind])
    # IOI held-out pairs: a held-out template (never trained) filled with training names
    frames = {k: [t.split("{")[0] + "|" + t.rsplit("}", 1)[1] for t in ts]
              for k, ts in v["heldout_templates"].items()}
    for p in read_pairs(heldout_path("ioi")):
        names = set(re.findall(r"\b[A-Z][a-z]+\b", p.clean_prefix)) & set(tasks.NAMES)
        assert len(names) == 2 and names <= set(v["train_names"])
        assert any(p.clean_prefix.startswith(f.split("|")[0]) and p.clean_prefix.endswith(f.split("|")[1])
                   for f in frames[p.case]), p
    assert v["heldout_kwargs"]["ioi"]["templates"] == v["heldout_templates"]
    held_nouns = {w for pair in v["heldout_nouns"] for w in pair}
    all_nouns = {w for pair in tasks.NOUNS for w in pair}
    for task in ("sva-simple", "sva-nounpp", "sva-rc", "sva-within-rc"):
        for p in read_pairs(heldout_path(task)):
            used = set(re.findall(r"[a-z]+", p.clean_prefix + " " + p.patch_prefix)) & all_nouns
            assert used and used <= held_nouns, (task, p)
    with pytest.raises(ValueError, match="sva-simple"):
        heldout_path("sva")


def _frac_positive(model, pairs) -> dict[str, float]:
    ds = tokenize_pairs(model, pairs, batch_size=64)
    assert not ds.dropped, ds.summary()
    by_case: dict[str, list[float]] = {}
    with torch.no_grad():
        for b in ds.batches:
            m = logit_diff(model, b.clean, b.clean_answer, b.patch_answer)
            for p, val in zip(b.pairs, m.tolist()):
                by_case.setdefault(p.case, []).append(val)
    out = {c: sum(x > 0 for x in vs) / len(vs) for c, vs in by_case.items()}
    allv = [x for vs in by_case.values() for x in vs]
    out["all"] = sum(x > 0 for x in allv) / len(allv)
    return out


@pytest.mark.parametrize("task", list(HELDOUT_FILES))
def test_behaviour_on_fresh_heldout_pairs(model, task):
    kwargs = heldout_vocab()["heldout_kwargs"][task]
    pairs = tasks.make_task(task, 96, seed=4242, **kwargs)
    frac = _frac_positive(model, pairs)
    if task == "ioi":
        assert set(frac) == {"ABBA", "BABA", "all"}
        for kind, f in frac.items():
            assert f >= 0.85, (kind, f)
    else:
        assert frac["all"] >= 0.85, frac


def test_bundled_heldout_pairs_behave(model):
    pairs = read_pairs(heldout_path("ioi"))[:120]
    frac = _frac_positive(model, pairs)
    assert frac["ABBA"] >= 0.85 and frac["BABA"] >= 0.85, frac


def test_forward_backward_on_32_prompts(model):
    pairs = tasks.make_task("ioi", 32, seed=7, **heldout_vocab()["heldout_kwargs"]["ioi"])
    toks = model.to_tokens([p.clean_prefix for p in pairs])  # right-padded batch
    assert toks.shape[0] == 32
    t = time.time()
    loss = model(toks, return_type="loss")
    loss.backward()
    elapsed = time.time() - t
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    model.zero_grad(set_to_none=True)
    assert elapsed < 30.0  # ~0.1 s on one idle core; generous for a shared CI machine


def test_the_cards_code_runs(model):
    """Every ``featcirc.`` name the card gives exists, and its calls run: the model and its SAEs load,
    the held-out vocabulary is there for every task (the card once named ``featcirc.tiny``, gone)."""
    import importlib

    import featcirc

    card = (TINY_DIR / "README.md").read_text(encoding="utf-8")
    spans = re.findall(r"`(featcirc\.[^`]+)`", card)
    assert any("load_model" in s for s in spans)
    ran = 0
    for span in spans:
        dotted = re.match(r"featcirc(?:\.\w+)+", span).group(0)
        parts = dotted.split(".")
        for n in range(len(parts), 0, -1):  # the longest importable module, then attributes
            try:
                obj = importlib.import_module(".".join(parts[:n]))
                break
            except ModuleNotFoundError:
                continue
        for attr in parts[n:]:
            assert hasattr(obj, attr), f"the card's `{span}`: {'.'.join(parts[:n])} has no {attr!r}"
            obj = getattr(obj, attr)
        if "(" in span:
            for task in heldout_vocab()["heldout_kwargs"] if "[task]" in span else [None]:
                assert eval(span, {"featcirc": featcirc, "model": model, "task": task}) is not None, span
            ran += 1
    assert ran >= 3


def test_card_reports_measured_numbers():
    card = (TINY_DIR / "README.md").read_text(encoding="utf-8")
    assert "python experiments/train_tiny.py" in card
    for site in ("embed", "resid.0", "attn.3", "mlp.3"):
        assert f"| {site} |" in card
    cfg = json.loads((TINY_DIR / "model" / "config.json").read_text())
    assert cfg["n_layers"] >= 4
