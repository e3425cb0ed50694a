"""A randomly initialised BERT backbone folder with the default backbone's tokenizer, offline.

    python benchmarks/random_backbone.py --size bert-base --out /tmp/bert-base

Speed and memory do not depend on the weights, so benchmarks that need a backbone of a given size
(BERT-base for the GPU step benchmark; tiny ones where only the store or the page is measured)
build it here instead of downloading one: `dallmi bench-speed --backbone /tmp/bert-base`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# (hidden, layers, heads, intermediate)
SIZES = {
    "bert-base": (768, 12, 12, 3072),  # bert-base-uncased, the paper's backbone
    "minilm": (384, 6, 12, 1536),  # all-MiniLM-L6-v2's shape
    "small": (64, 2, 2, 128),
    "tiny": (32, 2, 2, 64),
}


def random_backbone(folder: str | Path, size: str = "tiny", seed: int = 0) -> str:
    """Write a random BERT of `size` (a key of SIZES) and the default tokenizer to `folder`."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from dallmi_core.modeling.model import default_backbone_dir

    hidden, layers, heads, intermediate = SIZES[size]
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(default_backbone_dir())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=512,
    )
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="bert-base")
    parser.add_argument("--out", required=True, help="folder to write")
    args = parser.parse_args(argv)
    print(random_backbone(args.out, args.size))


if __name__ == "__main__":
    main()
