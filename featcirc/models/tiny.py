"""The embedded default model (docs/design.md §10): a tiny GPT-2-style model and its SAEs, shipped with
the package (its SAEs in the top-level ``saes/tiny/``) and trained by ``experiments/train_tiny.py``.

Bundle layout (``TINY_DIR``)::

    model/config.json          HookedTransformerConfig keyword arguments
    model/model.safetensors    the HookedTransformer state dict
    tokenizer/                 a word-level PreTrainedTokenizerFast (save_pretrained)
    heldout_<task>.jsonl       held-out prompt pairs (feature-circuits JSONL)
    vocab_split.json           which words / templates were held out of IOI and SVA training
    README.md                  the model card, with measured numbers

Everything loads offline from these files; nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import torch

from featcirc.saes.bundled_path import bundled_sae_dir

TINY_DIR: Path = Path(__file__).resolve().parent.parent / "resources" / "tiny"
"""The bundle directory of the tiny model."""

TINY_SAE_DIR: Path = bundled_sae_dir() / "tiny"
"""Directory of the tiny model's SAEs, one SAELens directory per site (``embed``, ``resid.0``, ...):
the repository's top-level ``saes/tiny/``, installed as ``featcirc.saes.bundled``."""

HELDOUT_FILES: dict[str, str] = {
    "ioi": "heldout_ioi.jsonl",
    "sva-simple": "heldout_sva_simple.jsonl",
    "sva-nounpp": "heldout_sva_nounpp.jsonl",
    "sva-rc": "heldout_sva_rc.jsonl",
    "sva-within-rc": "heldout_sva_within_rc.jsonl",
}
"""Held-out pair files of the bundle, by task name (the task names of :mod:`featcirc.data.tasks`)."""

BOS, EOS, PAD, UNK = "<|bos|>", "<|eos|>", "<|pad|>", "<|unk|>"
SPECIAL_TOKENS: tuple[str, ...] = (BOS, EOS, PAD, UNK)
PUNCTUATION: tuple[str, ...] = (".", ",", "!", "?")


def _missing(what: Path) -> FileNotFoundError:
    return FileNotFoundError(
        f"the tiny model bundle is incomplete: {what} does not exist. Rebuild it with "
        "`PYTHONPATH=. python experiments/train_tiny.py` (or reinstall featcirc)"
    )


def build_tokenizer(words: Iterable[str]) -> Any:
    """A word-level tokenizer over ``words`` (each also in its leading-space form ``"Ġword"``).

    WordLevel model + ByteLevel pre-tokenizer (``add_prefix_space=False``, GPT-2 regex) + ByteLevel
    decoder, wrapped in a ``PreTrainedTokenizerFast`` whose post-processor prepends ``<|bos|>``
    (so TransformerLens sees a BOS-prepending tokenizer and never reloads it from a hub). Ids:
    the four special tokens first, then words in sorted order (deterministic).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    forms: set[str] = set()
    for w in list(words) + list(PUNCTUATION):
        w = w.strip()
        if not w or " " in w:
            raise ValueError(f"tokenizer words must be single non-empty words, got {w!r}")
        forms.add(w)
        forms.add("Ġ" + w)
    vocab = {s: i for i, s in enumerate(SPECIAL_TOKENS)}
    for f in sorted(forms):
        vocab[f] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, vocab[BOS])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   unk_token=UNK, add_bos_token=True, padding_side="right")


def tiny_config(d_vocab: int, **overrides: Any) -> dict[str, Any]:
    """Keyword arguments of the tiny model's ``HookedTransformerConfig`` (GPT-2 style: LayerNorm,
    GELU MLP, learned positions, 4 layers of 4 heads, d_model 128, d_mlp 512, n_ctx 48)."""
    cfg: dict[str, Any] = dict(
        n_layers=4, d_model=128, n_heads=4, d_head=32, d_mlp=512, n_ctx=48, d_vocab=int(d_vocab),
        act_fn="gelu", normalization_type="LN", positional_embedding_type="standard",
        default_prepend_bos=True, model_name="featcirc-tiny", tokenizer_prepends_bos=True,
        original_architecture="featcirc-tiny", seed=0,
    )
    cfg.update(overrides)
    return cfg


def load_tiny_model(device: str = "cpu", directory: "str | Path | None" = None) -> Any:
    """Load the bundled tiny model as a ``HookedTransformer`` (offline, eval mode).

    ``directory`` defaults to :data:`TINY_DIR`; it must hold ``model/config.json``,
    ``model/model.safetensors`` and ``tokenizer/``.
    """
    from safetensors.torch import load_file
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformers import PreTrainedTokenizerFast

    root = Path(directory) if directory is not None else TINY_DIR
    cfg_path, weights, tok_dir = root / "model" / "config.json", root / "model" / "model.safetensors", root / "tokenizer"
    for p in (cfg_path, weights, tok_dir):
        if not p.exists():
            raise _missing(p)
    cfg_kwargs = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg_kwargs["device"] = device
    tok = PreTrainedTokenizerFast.from_pretrained(str(tok_dir))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = HookedTransformer(HookedTransformerConfig(**cfg_kwargs), tokenizer=tok, move_to_device=False)
    state = load_file(str(weights))
    model.load_state_dict(state, strict=True)
    model.to(device, print_details=False)
    model.eval()
    return model


def heldout_path(task: str) -> Path:
    """Path of the bundled held-out pairs of ``task`` (``ioi``, ``sva-simple``, ``sva-nounpp``,
    ``sva-rc``, ``sva-within-rc``)."""
    if task not in HELDOUT_FILES:
        raise ValueError(f"no held-out pairs for task {task!r}; choose one of {', '.join(HELDOUT_FILES)}")
    path = TINY_DIR / HELDOUT_FILES[task]
    if not path.is_file():
        raise _missing(path)
    return path


def heldout_vocab() -> dict:
    """The vocabulary split of the tiny model's training (``vocab_split.json``).

    Keys: ``heldout_names``, ``train_names``, ``heldout_nouns`` / ``train_nouns`` (lists of
    ``[singular, plural]``), ``heldout_templates`` / ``train_templates`` (``{kind: [template]}``),
    ``heldout_kwargs`` (``{task: keyword arguments of featcirc.tasks.make_task}`` that generate fresh
    held-out pairs, e.g. ``make_task("ioi", 64, seed, **heldout_vocab()["heldout_kwargs"]["ioi"])``:
    IOI = the held-out templates with training names; SVA = held-out nouns) and
    ``ioi_heldout_names_kwargs`` (``ioi_pairs`` arguments with held-out names in every template: a
    harder probe, whose result the card reports).
    """
    path = TINY_DIR / "vocab_split.json"
    if not path.is_file():
        raise _missing(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    return _tuplify(data)


def _tuplify(data: dict) -> dict:
    """JSON lists of word pairs back to tuples (the form featcirc.data.tasks expects)."""
    def fix(v: Any) -> Any:
        if isinstance(v, list) and v and all(isinstance(x, list) and len(x) == 2 for x in v):
            return [tuple(x) for x in v]
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        return v
    return {k: fix(v) for k, v in data.items()}


def n_parameters(model: torch.nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters())
