"""Tiny tokenizers and text encoders built in code (no files, no network).

One word-level vocabulary (:data:`SPECIALS` + :data:`WORDS`) serves every family; a *style*
adds the family's framing tokens (CLIP ``<|startoftext|> … <|endoftext|>``, T5 ``… </s>``,
BERT ``[CLS] … [SEP]``, Gemma / Llama / Mistral ``<s> …``, Qwen: none) and the Qwen-like
chat template :data:`CHAT_TEMPLATE` (system / user / assistant turns, string or list-of-parts
content, ``enable_thinking``). Text encoders are 2-layer (or ``layers``-layer) models of width
8-32 whose special-token ids match the tokenizer, so vocab size = ``len(tokenizer)`` (~180).
"""

from __future__ import annotations

from typing import Any

import torch
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
from transformers import (
    BertConfig,
    BertModel,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    Gemma2Config,
    Gemma2Model,
    GlmConfig,
    GlmModel,
    LlamaConfig,
    LlamaForCausalLM,
    Mistral3Config,
    Mistral3ForConditionalGeneration,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3Model,
    T5Config,
    T5EncoderModel,
    UMT5Config,
    UMT5EncoderModel,
)

SPECIALS = ("<pad>", "<s>", "</s>", "<unk>", "<|endoftext|>", "<|startoftext|>", "<|im_start|>",
            "<|im_end|>", "<think>", "</think>", "[CLS]", "[SEP]", "[MASK]", "<|vision_start|>",
            "<|vision_end|>", "<|image_pad|>", "<|video_pad|>", "[IMG]", "[INST]", "[/INST]",
            "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "<sop>", "<eop>", "[gMASK]")
WORDS = tuple("""user assistant system a an the of in on with and at to by for from is are
photo picture painting image drawing render cat dog bird car house tree flower sky sea city
red green blue yellow black white small big old new bright dark digit zero one two three four
five six seven eight nine you designed generate superior images degree text alignment based
textual prompts or prompt start describe detailing color shape size texture quantity spatial
relationships objects background given user's enhance it more details adding relevant only
output enhanced do not add any other explanation here are examples as follows field pixel
art anime style sharp focus high quality detailed beautiful landscape portrait man woman
""".split()) + tuple(".,:;!?'\"()-<>/") + ("\n",)  # noqa: SIM905
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for p in m['content'] %}{% if p['type'] == 'text' %}{{ p['text'] }}{% endif %}{% endfor %}"
    "{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n"
    "{% endif %}{% endif %}")
#: style -> (prefix special, suffix special, pad, eos, bos)
_STYLES = {
    "clip": ("<|startoftext|>", "<|endoftext|>", "<|endoftext|>", "<|endoftext|>",
             "<|startoftext|>"),
    "t5": (None, "</s>", "<pad>", "</s>", None),
    "bert": ("[CLS]", "[SEP]", "<pad>", "[SEP]", "[CLS]"),
    "bos": ("<s>", None, "<pad>", "</s>", "<s>"),
    "qwen": (None, None, "<|endoftext|>", "<|im_end|>", None),
    "glm": ("[gMASK]", None, "<|endoftext|>", "<|endoftext|>", "<sop>"),
}


def vocab() -> dict[str, int]:
    """The shared word-level vocabulary: token -> id (specials first)."""
    return {w: i for i, w in enumerate(dict.fromkeys((*SPECIALS, *WORDS)))}


def build_tokenizer(style: str = "qwen", model_max_length: int = 512,
                    padding_side: str = "right") -> PreTrainedTokenizerFast:
    """A word-level fast tokenizer of one :data:`_STYLES` style, with :data:`CHAT_TEMPLATE`.
    Words split on spaces and punctuation, ``\\n`` is its own token (so Qwen-Image's 34-token
    template prefix is 34 tokens here too); unknown words map to ``<unk>``."""
    if style not in _STYLES:
        raise ValueError(f"unknown tokenizer style {style!r}; known: {sorted(_STYLES)}")
    pre, post, pad, eos, bos = _STYLES[style]
    v = vocab()
    tok = Tokenizer(models.WordLevel(vocab=v, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([  # newline is a token, as in Qwen's BPE
        pre_tokenizers.Split(Regex(r"[^\S\n]+"), behavior="removed"),
        pre_tokenizers.Split(Regex(r"\n"), behavior="isolated"), pre_tokenizers.Punctuation()])
    if pre or post:
        single = " ".join(x for x in (pre, "$A", post) if x)
        tok.post_processor = processors.TemplateProcessing(
            single=single, special_tokens=[(s, v[s]) for s in (pre, post) if s])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token=pad, eos_token=eos, bos_token=bos,
        model_max_length=model_max_length, padding_side=padding_side,
        additional_special_tokens=[s for s in SPECIALS if s not in {"<unk>", pad, eos, bos}])
    fast.chat_template = CHAT_TEMPLATE
    return fast


def ids(tokenizer: Any, *names: str) -> list[int]:
    return [tokenizer.convert_tokens_to_ids(n) for n in names]


def clip_text(tok: Any, hidden: int = 32, projection: bool = False, layers: int = 2,
              projection_dim: int | None = None) -> torch.nn.Module:
    """CLIP text tower (``CLIPTextModelWithProjection`` when ``projection``); eos is
    ``<|endoftext|>`` (not id 2, so the pooled token is the first eos, as in real CLIP)."""
    pad, bos, eos = ids(tok, "<|endoftext|>", "<|startoftext|>", "<|endoftext|>")
    cfg = CLIPTextConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4,
                         max_position_embeddings=tok.model_max_length, bos_token_id=bos,
                         eos_token_id=eos, pad_token_id=pad,
                         projection_dim=projection_dim or hidden, hidden_act="gelu")
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg).eval()


def t5_encoder(tok: Any, d_model: int = 32, umt5: bool = False) -> torch.nn.Module:
    pad, eos = ids(tok, "<pad>", "</s>")
    # transformers' config signatures omit the extra attributes their **kwargs accept
    kw: dict[str, Any] = dict(vocab_size=len(tok), d_model=d_model, d_kv=8, d_ff=2 * d_model,
                              num_layers=2, num_heads=4, relative_attention_num_buckets=8,
                              pad_token_id=pad, eos_token_id=eos, decoder_start_token_id=pad)
    if umt5:
        return UMT5EncoderModel(UMT5Config(**kw)).eval()
    return T5EncoderModel(T5Config(**kw)).eval()


def bert_encoder(tok: Any, hidden: int = 32) -> BertModel:
    return BertModel(BertConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=2,
                                num_attention_heads=4, intermediate_size=2 * hidden,
                                max_position_embeddings=tok.model_max_length,
                                pad_token_id=ids(tok, "<pad>")[0])).eval()


def qwen3(tok: Any, hidden: int = 16, layers: int = 2, causal_lm: bool = False) -> torch.nn.Module:
    cfg = Qwen3Config(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden,
                      num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=2,
                      head_dim=8, max_position_embeddings=2048, pad_token_id=tok.pad_token_id)
    return (Qwen3ForCausalLM if causal_lm else Qwen3Model)(cfg).eval()


def gemma2(tok: Any, hidden: int = 8, layers: int = 2) -> Gemma2Model:
    # attn_implementation: a config kwarg transformers accepts but its signature omits
    extra: dict[str, Any] = {"attn_implementation": "eager"}
    return Gemma2Model(Gemma2Config(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, head_dim=4,
        num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=2,
        max_position_embeddings=2048, sliding_window=4096, pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **extra)).eval()


def glm(tok: Any, hidden: int = 32) -> GlmModel:
    return GlmModel(GlmConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=16,
                              num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                              head_dim=8, max_position_embeddings=2048,
                              pad_token_id=tok.pad_token_id)).eval()


def llama_lm(tok: Any, hidden: int = 16, layers: int = 2) -> LlamaForCausalLM:
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
        num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=2,
        max_position_embeddings=2048, pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)).eval()


def qwen25_vl(tok: Any, hidden: int = 16) -> Qwen2_5_VLForConditionalGeneration:
    """Qwen2.5-VL with a 2-layer text model and a 1-block vision tower (unused for text)."""
    vs, ve, im, vi = ids(tok, "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
                         "<|video_pad|>")
    cfg = Qwen2_5_VLConfig(
        text_config={"vocab_size": len(tok), "hidden_size": hidden, "intermediate_size": hidden,
                     "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2,
                     "max_position_embeddings": 2048, "rope_theta": 1e6,
                     "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default",
                                      "type": "default"},
                     "pad_token_id": tok.pad_token_id, "bos_token_id": tok.pad_token_id,
                     "eos_token_id": tok.eos_token_id},
        vision_config={"depth": 1, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2,
                       "out_hidden_size": hidden, "fullatt_block_indexes": [0]},
        image_token_id=im, video_token_id=vi, vision_start_token_id=vs, vision_end_token_id=ve)
    return Qwen2_5_VLForConditionalGeneration(cfg).eval()


def mistral3(tok: Any, hidden: int = 16, layers: int = 2) -> Mistral3ForConditionalGeneration:
    """Mistral3 (Mistral text model + 1-layer Pixtral vision tower, unused for text)."""
    cfg = Mistral3Config(
        text_config={"model_type": "mistral", "vocab_size": len(tok), "hidden_size": hidden,
                     "intermediate_size": 2 * hidden, "num_hidden_layers": layers,
                     "num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 8,
                     "max_position_embeddings": 2048, "sliding_window": None,
                     "pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id,
                     "eos_token_id": tok.eos_token_id},
        vision_config={"model_type": "pixtral", "hidden_size": 16, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "intermediate_size": 16, "image_size": 32,
                       "patch_size": 8, "num_channels": 3},
        image_token_index=ids(tok, "[IMG]")[0], spatial_merge_size=1)
    return Mistral3ForConditionalGeneration(cfg).eval()


__all__ = [
    "CHAT_TEMPLATE",
    "SPECIALS",
    "WORDS",
    "bert_encoder",
    "build_tokenizer",
    "clip_text",
    "gemma2",
    "glm",
    "ids",
    "llama_lm",
    "mistral3",
    "qwen3",
    "qwen25_vl",
    "t5_encoder",
    "vocab",
]
