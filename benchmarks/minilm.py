"""Sentence embeddings of the trained MiniLM-shaped encoder after removing 20% of its MLP neurons,
training-free (issue #12).

    python benchmarks/minilm.py                       # every method, writes benchmarks/results/minilm.json
    python benchmarks/minilm.py --methods recon+lstsq vbp+lstsq --ratio 0.2

Model: models/trained/minilm.ts.onnx (6 post-LN layers, hidden 384, 12 heads, MLP 1536; masked-language
modelling on the stdlib docstrings; re-created by models/trained/train.py mlm + export.py, see
models/trained/README.md). ``--ratio 0.2`` removes round(0.2 x 1536) = 307 neurons of every MLP (the
residual stream and the heads stay: onnxprune prunes them only with --embed-dim / --heads).

Data (all from models/trained/corpus.jsonl.gz, split by text.doc_split, which the training used):
- held-out sentences: the first paragraph of every *validation* docstring (never trained on), cut to
  126 bytes, de-duplicated; the first ``--sentences`` of them;
- calibration: ``--calib`` 128-byte windows of *training* docstrings (vbp, recon and compensation).

Measures, for each method, on the held-out sentences:
- mean cosine similarity between each sentence's embedding in the pruned and in the original model
  (the embedding: the last hidden state mean-pooled over the non-padding tokens);
- nearest-neighbour agreement: for each sentence, whether its nearest neighbour among the other
  held-out sentences (cosine) is the same sentence in both models.
Also recorded: how alike the original's embeddings of different sentences are (``original_pairwise_cosine``),
the scale the cosine to the original must be read against.
Targets (issue #12): cosine >= 0.98 and NN agreement >= 0.90 for the best training-free method.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TRAINED = ROOT / "models" / "trained"
RESULTS = ROOT / "benchmarks" / "results"
MODEL = TRAINED / "minilm.ts.onnx"
METHODS = ["recon+lstsq", "vbp+lstsq", "vbp+mean", "l2", "sp-lamp", "random"]
SEQ = 128


def held_out_sentences(text, n: int) -> list[str]:
    """First paragraph of each validation docstring, <= SEQ - 2 bytes, unique, in corpus order."""
    seen, out = set(), []
    for r in text.read_corpus():
        if text.doc_split(r) != "val":
            continue
        para = " ".join(r["doc"].split("\n\n")[0].split())
        b = para.encode("utf-8")[:SEQ - 2].decode("utf-8", errors="ignore").strip()
        if len(b) >= 20 and b not in seen:
            seen.add(b)
            out.append(b)
    return out[:n]


def calibration(text, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    docs = [r["doc"] for r in text.read_corpus() if text.doc_split(r) == "train"]
    windows = text.mlm_windows(docs, SEQ)
    pick = np.random.default_rng(seed).choice(len(windows), size=min(n, len(windows)), replace=False)
    ids, mask = text.encode_batch([windows[i] for i in sorted(pick)], SEQ)
    return {"input_ids": ids.astype(np.int64), "attention_mask": mask.astype(np.int64)}


def embeddings(model, feeds: dict[str, np.ndarray], batch: int = 32) -> np.ndarray:
    """Mean over the non-padding tokens of the last hidden state, per sentence (float64)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    data = model if isinstance(model, bytes) else model.SerializeToString()
    s = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    out = []
    for i in range(0, len(feeds["input_ids"]), batch):
        f = {k: v[i:i + batch] for k, v in feeds.items()}
        h = s.run(["last_hidden_state"], f)[0].astype(np.float64)
        m = f["attention_mask"][..., None].astype(np.float64)
        out.append((h * m).sum(1) / np.maximum(m.sum(1), 1.0))
    return np.concatenate(out)


def unit(e: np.ndarray) -> np.ndarray:
    return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)


def nearest_neighbours(e: np.ndarray) -> np.ndarray:
    sim = unit(e) @ unit(e).T
    np.fill_diagonal(sim, -np.inf)
    return sim.argmax(1)


def pairwise_cosine(e: np.ndarray) -> dict:
    """How alike the original's embeddings of *different* sentences are (mean, and the mean cosine to
    the nearest neighbour): the scale a pruned model's cosine to the original must be read against."""
    sim = unit(e) @ unit(e).T
    off = sim[~np.eye(len(e), dtype=bool)]
    np.fill_diagonal(sim, -np.inf)
    return {"mean": round(float(off.mean()), 5), "nearest_mean": round(float(sim.max(1).mean()), 5)}


def compare(ref: np.ndarray, pruned: np.ndarray) -> dict:
    cos = (unit(ref) * unit(pruned)).sum(1)
    agree = nearest_neighbours(ref) == nearest_neighbours(pruned)
    return {"cosine_mean": round(float(cos.mean()), 5), "cosine_min": round(float(cos.min()), 5),
            "nn_agreement": round(float(agree.mean()), 4)}


def prune_one(model_path: Path, method: str, ratio: float, calib: dict, seed: int):
    from onnxprune import prune

    scorer, _, comp = method.partition("+")
    kw = dict(ratio=ratio, scorer=scorer, latency=False, seed=seed,
              input_shapes={"input_ids": [1, 16], "attention_mask": [1, 16]})
    if scorer in ("vbp", "recon") or comp:
        kw["calib"] = calib
    kw["compensate"] = comp or ("none" if scorer not in ("vbp",) else "mean")
    return prune(str(model_path), **kw)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="*", default=METHODS, help="scorer or scorer+compensation (mean|lstsq)")
    ap.add_argument("--ratio", type=float, default=0.2, help="share of every MLP's neurons removed")
    ap.add_argument("--sentences", type=int, default=400)
    ap.add_argument("--calib", type=int, default=256, help="calibration windows of 128 bytes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", type=Path, default=MODEL, help="the exported encoder (default: %(default)s)")
    ap.add_argument("--manifest-key", default="minilm_cpu",
                    help="models/trained/manifest.json entry that describes the exported weights (default: %(default)s, "
                         "the CPU re-creation; 'minilm' is the lost H200 run)")
    ap.add_argument("--out", type=Path, default=RESULTS / "minilm.json")
    args = ap.parse_args(argv)
    if not args.model.exists():
        print(f"error: {args.model} is missing: re-create it with models/trained/train.py mlm and "
              f"export.py --weights DIR mlm (models/trained/README.md)", file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(TRAINED))
    import onnx
    import text

    sentences = held_out_sentences(text, args.sentences)
    ids, mask = text.encode_batch(sentences, SEQ)
    feeds = {"input_ids": ids.astype(np.int64), "attention_mask": mask.astype(np.int64)}
    calib = calibration(text, args.calib, args.seed)
    ref = embeddings(onnx.load(str(args.model)), feeds)
    spread = pairwise_cosine(ref)
    manifest = json.loads((TRAINED / "manifest.json").read_text())
    manifest = manifest.get(args.manifest_key, {})
    result = {"model": args.model.name, "ratio": args.ratio, "sentences": len(sentences),
              "calib_windows": len(calib["input_ids"]), "seed": args.seed,
              "manifest_entry": args.manifest_key,
              "val_masked_acc": manifest.get("val_masked_acc_cpu_fp32_first512"),
              "training": {k: manifest.get("training", {}).get(k) for k in ("steps", "device", "seconds", "hparams")},
              "command": "python benchmarks/minilm.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "original_pairwise_cosine": spread, "methods": {}}
    for method in args.methods:
        t0 = time.perf_counter()
        res = prune_one(args.model, method, args.ratio, calib, args.seed)
        secs = time.perf_counter() - t0
        m = compare(ref, embeddings(res.model, feeds))
        rep = res.report
        m.update(seconds=round(secs, 1), load_avg_1m=round(os.getloadavg()[0], 2),
                 macs_ratio=round(rep.pruned.macs / rep.baseline.macs, 4),
                 params_ratio=round(rep.pruned.params / rep.baseline.params, 4),
                 verified=bool(rep.verification and rep.verification.passed), notes=list(rep.notes))
        result["methods"][method] = m
        print(f"{method:>14}: cosine {m['cosine_mean']:.4f} (min {m['cosine_min']:.4f})  "
              f"NN agreement {m['nn_agreement']:.3f}  {secs:.0f}s load {m['load_avg_1m']}", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")  # after every method: a long run keeps what it did
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
