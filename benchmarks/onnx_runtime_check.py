"""ONNX Runtime against PyTorch's float32 forward on a source model: is it worth a dependency? (issue 17)

The model is exported once with the legacy TorchScript exporter, its graph is fused by
`onnxruntime.transformers.optimizer`, and it is dynamically quantised to int8 two ways: U8S8 with
7-bit activations (`reduce_range`, what AVX2 without VNNI needs against saturation) and U8U8. Every
engine scores the same length-sorted batches of 16 target documents (the first 1,000), on one
thread. The script reports speed against PyTorch's float32, the change in macro AP, and the mean
absolute score change.

The exporter returns the module it exported in training mode. Left like that, PyTorch's reference
would run with dropout, which is slower and gives other scores. A first measurement here showed
ONNX float32 at 2.0x for that reason, so the module is put back in eval mode after the export.

Not a dependency of the project: `pip install onnxruntime onnx onnxscript` first.

    OMP_NUM_THREADS=1 python benchmarks/onnx_runtime_check.py \\
        --data ../shared/data/movies_shift.csv --model SOURCE_MODEL_DIR
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dallmi_core.data.corpus import read_corpus
from dallmi_core.evaluation.metrics import ap_report
from dallmi_core.modeling.model import forward_logits, load_classifier
from dallmi_core.modeling.tokens import TokenizedCorpus

BATCH = 16


class _Logits(nn.Module):
    """(input_ids, attention_mask) -> logits: the signature the export traces."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return forward_logits(self.model, input_ids=input_ids, attention_mask=attention_mask)


def _onnx_files(model: nn.Module, example: tuple, folder: Path) -> dict[str, Path]:
    """float32 (fused), int8 U8S8 at 7 bits and int8 U8U8 ONNX files of `model`."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers import optimizer

    raw, fused = folder / "model.onnx", folder / "fused.onnx"
    wrapper = _Logits(model).eval()
    axes = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"}, "logits": {0: "batch"}}
    torch.onnx.export(
        wrapper, example, raw, input_names=["input_ids", "attention_mask"], output_names=["logits"],
        dynamic_axes=axes, dynamo=False,
    )  # fmt: skip
    model.eval()  # the exporter leaves the module in training mode: dropout would run in the reference
    config = model.config
    optimizer.optimize_model(
        str(raw), model_type="bert", num_heads=config.num_attention_heads, hidden_size=config.hidden_size
    ).save_model_to_file(str(fused))
    files = {"onnx-float32": fused, "onnx-int8-u8s8-7bit": folder / "u8s8.onnx", "onnx-int8-u8u8": folder / "u8u8.onnx"}
    float_type = {"DefaultTensorType": 1}  # the fused graph's contrib ops carry no inferred output types
    quantize_dynamic(fused, files["onnx-int8-u8s8-7bit"], weight_type=QuantType.QInt8, per_channel=True,
                     reduce_range=True, extra_options=float_type)  # fmt: skip
    quantize_dynamic(fused, files["onnx-int8-u8u8"], weight_type=QuantType.QUInt8, per_channel=True,
                     extra_options=float_type)  # fmt: skip
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", required=True, help="a source model folder (dallmi finetune-source --out)")
    parser.add_argument("--docs", type=int, default=1000, help="the first N target rows")
    parser.add_argument("--max-length", type=int, default=96)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    import onnxruntime as ort

    torch.set_num_threads(1)
    clf = load_classifier(args.model)
    model, labels = clf.model.float().eval(), list(clf.label_names)
    target = read_corpus(args.data).where_domain("target")
    rows = np.arange(min(args.docs, len(target)))
    tokens = TokenizedCorpus.build(clf.tokenizer, [target.texts[i] for i in rows], args.max_length)
    gold = target.label_matrix(labels)[rows]
    order = np.argsort(tokens.lengths, kind="stable")
    batches = [(part, *tokens.collate(part)) for part in np.array_split(order, max(1, len(rows) // BATCH))]

    def torch_scores() -> np.ndarray:
        out = np.zeros((len(rows), len(labels)), np.float32)
        with torch.inference_mode():
            for part, ids, mask in batches:
                out[part] = torch.sigmoid(forward_logits(model, input_ids=ids, attention_mask=mask)).numpy()
        return out

    def onnx_scorer(path: Path):
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

        def scores() -> np.ndarray:
            out = np.zeros((len(rows), len(labels)), np.float32)
            for part, ids, mask in batches:
                feed = {"input_ids": ids.numpy().astype(np.int64), "attention_mask": mask.numpy().astype(np.int64)}
                out[part] = 1 / (1 + np.exp(-session.run(None, feed)[0]))
            return out

        return scores

    with tempfile.TemporaryDirectory() as folder:
        files = _onnx_files(model, tuple(batches[0][1:]), Path(folder))
        engines = {"torch-float32": torch_scores} | {name: onnx_scorer(path) for name, path in files.items()}
        runs = {}
        for name, scores in engines.items():
            scores()  # warm-up
            best = float("inf")
            for _ in range(2):
                start = time.perf_counter()
                result = scores()
                best = min(best, time.perf_counter() - start)
            runs[name] = (best, result)
    seconds32, scores32 = runs["torch-float32"]
    ap32 = ap_report(gold, scores32, labels).map_macro
    out = {"data": args.data, "model": args.model, "documents": len(rows), "macro_ap_float32": round(ap32, 4)}
    for name, (seconds, scores) in runs.items():
        out[name] = {
            "speed": round(seconds32 / seconds, 2),
            "ap_delta": round(abs(ap_report(gold, scores, labels).map_macro - ap32), 5),
            "mean_abs_score_delta": round(float(np.abs(scores - scores32).mean()), 5),
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
