"""A tiny, randomly initialised CLAP saved like a hub snapshot, for tests without network.

It keeps the real audio front end (48 kHz, 10 s windows, 64 mel bins, hop 480, so a window is
1001 frames on a 256x256 spectrogram image) and shrinks everything behind it: HTSAT with
16x16 patches, two Swin stages of one block (16 and 32 channels), a 2-layer 32-wide RoBERTa,
a 300-token byte-level BPE trained here, and 24-dimensional projections (~56k parameters).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, ClapProcessor, RobertaTokenizerFast

SEED = 0
DIM = 24
SENTENCES = [
    "a dog barks loudly in the yard",
    "the sound of a cat meowing",
    "rain falling on a tin roof",
    "a car engine starting and revving",
    "birds singing in the early morning",
    "a piano playing a slow melody",
    "a cow mooing on the farm",
    "water running from a tap",
]
# RoBERTa's special-token ids: <s>=0, <pad>=1, </s>=2.
SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def _tokenizer(max_tokens: int) -> RobertaTokenizerFast:
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(SENTENCES, vocab_size=300, min_frequency=1, special_tokens=SPECIAL_TOKENS,
                            show_progress=False)
    with tempfile.TemporaryDirectory() as d:
        bpe.save_model(d)  # vocab.json + merges.txt, what RoBERTa tokenizers load
        return RobertaTokenizerFast.from_pretrained(d, model_max_length=max_tokens)


def make_tiny_clap(directory: Path, *, full_size: bool = False) -> Path:
    """Write config, weights, tokenizer and feature extractor into ``directory``; return it.
    ``full_size`` keeps the laion/clap-htsat-unfused towers (for benchmarks: the real compute)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    max_tokens = 64
    tokenizer = _tokenizer(max_tokens)
    config = ClapConfig(
        text_config=dict(vocab_size=len(tokenizer), max_position_embeddings=max_tokens + 2,
                         pad_token_id=1, bos_token_id=0, eos_token_id=2),
        audio_config=dict(enable_fusion=False),
    ) if full_size else ClapConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, max_position_embeddings=max_tokens + 2,
            pad_token_id=1, bos_token_id=0, eos_token_id=2,
        ),
        audio_config=dict(
            spec_size=256, num_mel_bins=64, patch_size=16, patch_stride=(16, 16), window_size=8,
            depths=[1, 1], num_attention_heads=[1, 2], patch_embeds_hidden_size=16, hidden_size=32,
            enable_fusion=False,
        ),
        projection_dim=DIM,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = ClapModel(config).eval()
    # Same front end as laion/clap-htsat-unfused: one deterministic mel per window.
    extractor = ClapFeatureExtractor(
        feature_size=64, sampling_rate=48_000, hop_length=480, max_length_s=10, fft_window_size=1024,
        frequency_min=50, frequency_max=14_000, truncation="rand_trunc", padding="repeatpad",
    )
    model.save_pretrained(directory)
    ClapProcessor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(directory)
    return directory
