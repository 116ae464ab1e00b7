#!/usr/bin/env python
"""Train the models of this folder (GPU if there is one, else CPU) and write their weights.

    python models/trained/train.py vision  --out DIR [--quick]          # -> DIR/vision.pt
    python models/trained/train.py textcls --out DIR [--quick]          # -> DIR/textcls.pt
    python models/trained/train.py mlm     --out DIR [--budget-s 300] [--quick]
                                                                        # -> DIR/mlm_0..3.pt

Each file holds {model name: {"state_dict", "metrics", ...}} (vision: all four digit nets;
mlm: the encoder in 4 shards of < 16 MiB: embeddings + MLM head, then two layers per shard).
--quick: a few steps on a data subset, to check the script end to end on a CPU.
export.py turns the weights into ONNX files, verifies them and writes manifest.json.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import text  # noqa: E402
import vision  # noqa: E402

DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")
# bf16 autocast on the GPU, and on a CPU whose matrix units take bf16 (AMX): 4-6x faster than fp32 there
# (MiniLM, batch 128: 3.2 s/step vs 11-21 s/step on the 2-core dev machine).
BF16 = DEV.type == "cuda" or "amx_bf16" in (Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else "")
MLM_SHARDS = ((), (0, 1), (2, 3), (4, 5))  # shard k holds these encoder layers (0: the rest)
MLM_HP = dict(max_len=128, batch=256, lr=5e-4, wd=0.01, warmup=300, max_steps=40000, eval_every=500)
TEXTCLS_HP = dict(epochs=40, lr=2e-3, wd=0.01, batch=64)


def log(*a):
    print(f"[{time.strftime('%H:%M:%S')}]", *a, flush=True)


def warmup_cosine(warm: int, total_ref: list):
    """LR factor: linear warm-up, then cosine to 0 at total_ref[0] (a list: may be set later)."""
    def f(s):
        if s < warm:
            return (s + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (s - warm) / max(1, total_ref[0] - warm))))
    return f


def adamw(model, lr, wd):
    """AdamW, no weight decay on vectors, position embeddings and the class token."""
    def decays(n, p):
        return p.ndim > 1 and "pos" not in n and "cls_token" not in n
    params = list(model.named_parameters())
    return torch.optim.AdamW([{"params": [p for n, p in params if decays(n, p)], "weight_decay": wd},
                              {"params": [p for n, p in params if not decays(n, p)], "weight_decay": 0.0}],
                             lr=lr)


@torch.no_grad()
def accuracy(model, x, y, batch=256) -> float:
    model.eval()
    pred = torch.cat([model(x[i:i + batch].to(DEV)).argmax(1).cpu() for i in range(0, len(x), batch)])
    return (pred == y).float().mean().item()


# ----------------------------------------------------------------------------------- vision
def train_vision(name: str, quick: bool, seed: int = 0):
    size, hp = vision.image_size(name), dict(vision.HPARAMS[name])
    if quick:
        hp["epochs"] = 1
    torch.manual_seed(seed)
    splits = vision.load_splits(size, normalized=False)
    xtr01, ytr = splits["train"]
    xte, yte = vision.digits_train.normalize(splits["test"][0]), splits["test"][1]
    xca, yca = vision.digits_train.normalize(splits["calib"][0]), splits["calib"][1]
    if quick:
        xtr01, ytr, xte, yte, xca, yca = xtr01[:130], ytr[:130], xte[:64], yte[:64], xca[:64], yca[:64]
    model = vision.build(name).to(DEV)
    opt = adamw(model, hp["lr"], hp["wd"])
    spe = math.ceil(len(xtr01) / hp["batch"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(spe * 2, [spe * hp["epochs"]]))
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for ep in range(hp["epochs"]):
        model.train()
        perm = torch.randperm(len(xtr01), generator=g)
        tot = 0.0
        for i in range(0, len(perm), hp["batch"]):
            b = perm[i:i + hp["batch"]]
            if len(b) < 2:  # BatchNorm needs > 1 sample
                continue
            xb = vision.digits_train.normalize(vision.digits_train.augment(xtr01[b], g)).to(DEV)
            loss = F.cross_entropy(model(xb), ytr[b].to(DEV), label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += loss.item() * len(b)
        if ep % 10 == 9 or ep == hp["epochs"] - 1:
            log(f"[{name}] epoch {ep + 1}/{hp['epochs']} loss {tot / len(perm):.4f} "
                f"test acc {accuracy(model, xte, yte):.4f} ({time.perf_counter() - t0:.0f}s)")
    acc = accuracy(model, xte, yte)
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return {"state_dict": sd, "image_size": size, "hparams": hp, "seed": seed,
            "metrics": {"torch_test_acc": acc, "torch_calib_acc": accuracy(model, xca, yca),
                        "train_seconds": round(time.perf_counter() - t0, 1),
                        "device": str(DEV), "torch": torch.__version__, "quick": quick}}


def run_vision(out: Path, quick: bool, names):
    result = {}
    for name in names:
        log(f"== vision {name} on {DEV}")
        result[name] = train_vision(name, quick)
        torch.save(result, out / "vision.pt")  # after every model: a timeout keeps what finished


# ---------------------------------------------------------------------------------- textcls
def run_textcls(out: Path, quick: bool, seed: int = 0):
    hp = dict(TEXTCLS_HP)
    if quick:
        hp["epochs"] = 1
    torch.manual_seed(seed)
    texts, labels, names = text.class_dataset(text.read_corpus())
    tr, _, te = text.class_splits(labels)
    ids, _ = text.encode_batch(texts, text.CLS_LEN)
    xtr, ytr = torch.from_numpy(ids[tr]), torch.from_numpy(labels[tr])
    xte, yte = torch.from_numpy(ids[te]), torch.from_numpy(labels[te])
    if quick:
        xtr, ytr = xtr[:256], ytr[:256]
    model = text.ByteCNN().to(DEV)
    opt = adamw(model, hp["lr"], hp["wd"])
    spe = math.ceil(len(xtr) / hp["batch"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(spe, [spe * hp["epochs"]]))
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for ep in range(hp["epochs"]):
        model.train()
        perm = torch.randperm(len(xtr), generator=g)
        for i in range(0, len(perm), hp["batch"]):
            b = perm[i:i + hp["batch"]]
            if len(b) < 2:
                continue
            loss = F.cross_entropy(model(xtr[b].to(DEV)), ytr[b].to(DEV), label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        if ep % 10 == 9 or ep == hp["epochs"] - 1:
            log(f"[textcls] epoch {ep + 1}/{hp['epochs']} loss {loss.item():.4f} "
                f"test acc {accuracy(model, xte, yte):.4f}")
    acc = accuracy(model, xte, yte)
    torch.save({"textcls": {"state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
                            "classes": names, "hparams": hp, "seed": seed,
                            "metrics": {"torch_test_acc": acc, "device": str(DEV), "quick": quick,
                                        "train_seconds": round(time.perf_counter() - t0, 1)}}},
               out / "textcls.pt")


# -------------------------------------------------------------------------------------- mlm
def mlm_data(hp, quick: bool):
    recs = text.read_corpus()
    split = {k: [r["doc"] for r in recs if text.doc_split(r) == k] for k in ("train", "val")}
    data = {}
    for k, docs in split.items():
        ids, _ = text.encode_batch(text.mlm_windows(docs, hp["max_len"]), hp["max_len"])
        data[k] = torch.from_numpy(ids[:512] if quick else ids).to(DEV)
    return data


@torch.no_grad()
def mlm_eval(enc, head, ids, seed=1234, batch=512):
    """Masked-token accuracy and loss on fixed masks (the same masks at every evaluation)."""
    enc.eval(), head.eval()
    g = torch.Generator(device=DEV).manual_seed(seed)
    correct = total = 0
    loss_sum = 0.0
    for i in range(0, len(ids), batch):
        x = ids[i:i + batch]
        inp, lab = text.mask_tokens(x, g)
        with torch.autocast(DEV.type, dtype=torch.bfloat16, enabled=BF16):
            logits = head(enc(inp, (x != text.PAD).long()), enc.tok.weight).float()
        sel = lab != -100
        correct += (logits.argmax(-1)[sel] == lab[sel]).sum().item()
        loss_sum += F.cross_entropy(logits[sel], lab[sel], reduction="sum").item()
        total += sel.sum().item()
    return correct / max(total, 1), loss_sum / max(total, 1)


def mlm_step(enc, head, opt, sched, x, g):
    inp, lab = text.mask_tokens(x, g)
    with torch.autocast(DEV.type, dtype=torch.bfloat16, enabled=BF16):
        logits = head(enc(inp, (x != text.PAD).long()), enc.tok.weight)
    sel = lab != -100
    loss = F.cross_entropy(logits[sel].float(), lab[sel])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(list(enc.parameters()) + list(head.parameters()), 1.0)
    opt.step()
    sched.step()
    return loss


def snapshot(enc, head):
    return ({k: v.detach().clone() for k, v in enc.state_dict().items()},
            {k: v.detach().clone() for k, v in head.state_dict().items()})


def run_mlm(out: Path, quick: bool, budget_s: float, seed: int = 0, overrides: dict | None = None):
    """Masked-language modelling for about budget_s seconds: the step count is set after timing
    the first 50 steps, so that warm-up + cosine decay end inside the budget. The kept weights
    are those of the evaluation with the best validation masked-token accuracy."""
    hp = dict(MLM_HP, **{k: v for k, v in (overrides or {}).items() if v is not None})
    torch.manual_seed(seed)
    torch.backends.cuda.matmul.allow_tf32 = True
    data = mlm_data(hp, quick)
    enc = text.MiniLMEncoder().to(DEV)
    head = text.MLMHead(enc).to(DEV)
    enc.set_fast_attention(True)
    opt = adamw(torch.nn.ModuleDict({"enc": enc, "head": head}), hp["lr"], hp["wd"])
    total = [hp["max_steps"]]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(hp["warmup"], total))
    g = torch.Generator(device=DEV).manual_seed(seed)
    gp = torch.Generator().manual_seed(seed)
    ntr = len(data["train"])
    t0 = time.perf_counter()
    best = (-1.0, None, None, 0)
    step, history = 0, []
    fixed_steps = (overrides or {}).get("max_steps")
    if quick:
        total[0] = 6
    while step < total[0]:
        perm = torch.randperm(ntr, generator=gp).to(DEV)
        for i in range(0, ntr - hp["batch"] + 1 if ntr >= hp["batch"] else 1, hp["batch"]):
            enc.train(), head.train()
            loss = mlm_step(enc, head, opt, sched, data["train"][perm[i:i + hp["batch"]]], g)
            step += 1
            if step == 50 and not quick and fixed_steps is None:
                if DEV.type == "cuda":
                    torch.cuda.synchronize()
                per_step = (time.perf_counter() - t0) / 50
                total[0] = int(min(hp["max_steps"], max(hp["warmup"] * 2, budget_s / per_step * 0.97)))
                log(f"[mlm] {per_step * 1e3:.1f} ms/step -> {total[0]} steps")
            if step % hp["eval_every"] == 0 or step >= total[0]:
                acc, vloss = mlm_eval(enc, head, data["val"])
                history.append({"step": step, "train_loss": round(loss.item(), 4), "val_acc": round(acc, 4),
                                "val_loss": round(vloss, 4), "seconds": round(time.perf_counter() - t0, 1)})
                log(f"[mlm] {history[-1]}")
                if acc > best[0]:
                    best = (acc, *snapshot(enc, head), step)
                    # written at every improvement, so a run stopped early leaves its best weights
                    save_mlm_shards(out, best[1], best[2], hp, {
                        "val_masked_acc": acc, "best_step": step, "steps": step, "history": history,
                        "device": str(DEV), "bf16": BF16, "torch": torch.__version__,
                        "seconds": round(time.perf_counter() - t0, 1), "quick": quick, "partial": True})
            if step >= total[0]:
                break
    acc, enc_sd, head_sd, best_step = best
    metrics = {"val_masked_acc": acc, "best_step": best_step, "steps": step, "history": history,
               "train_windows": ntr, "val_windows": len(data["val"]), "device": str(DEV),
               "bf16": BF16, "torch": torch.__version__, "seconds": round(time.perf_counter() - t0, 1), "quick": quick}
    save_mlm_shards(out, enc_sd, head_sd, hp, metrics)


def save_mlm_shards(out: Path, enc_sd: dict, head_sd: dict, hp: dict, metrics: dict):
    def layer_of(k):
        return int(k.split(".")[1]) if k.startswith("layers.") else None
    for k, layers in enumerate(MLM_SHARDS):
        sd = {n: v.cpu() for n, v in enc_sd.items() if layer_of(n) in layers or (not layers and layer_of(n) is None)}
        entry = {"encoder_part": sd, "shard": k, "n_shards": len(MLM_SHARDS)}
        if k == 0:
            entry.update(head={n: v.cpu() for n, v in head_sd.items()}, hparams=hp, metrics=metrics)
        torch.save(entry, out / f"mlm_{k}.pt")


# ------------------------------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("vision", "textcls", "mlm"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--budget-s", type=float, default=300.0, help="mlm: training seconds")
    ap.add_argument("--models", nargs="*", default=list(vision.NAMES), help="vision: which nets")
    ap.add_argument("--batch", type=int, help="mlm: batch size (default 256; a CPU run uses less)")
    ap.add_argument("--lr", type=float, help="mlm: peak learning rate (default 5e-4)")
    ap.add_argument("--warmup", type=int, help="mlm: warm-up steps (default 300)")
    ap.add_argument("--steps", type=int, help="mlm: a fixed step count (default: set from --budget-s "
                    "after timing 50 steps, which a machine under changing load gets wrong)")
    ap.add_argument("--eval-every", type=int, help="mlm: steps between evaluations (default 500)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("TRAIN_THREADS", "4")))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = True
    args.out.mkdir(parents=True, exist_ok=True)
    log(f"{args.what} on {DEV} (torch {torch.__version__})")
    if args.what == "vision":
        run_vision(args.out, args.quick, args.models)
    elif args.what == "textcls":
        run_textcls(args.out, args.quick)
    else:
        run_mlm(args.out, args.quick, args.budget_s,
                overrides=dict(batch=args.batch, lr=args.lr, max_steps=args.steps, warmup=args.warmup, eval_every=args.eval_every))
    log(f"{args.what} done")


if __name__ == "__main__":
    main()
