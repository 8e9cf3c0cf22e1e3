"""Train a small neural network on the digits dataset, checkpointing every epoch.

Runs inside the job container that `cargohold run` starts:
  - reads the dataset from the read-only dataset store ($CARGOHOLD_STORE_DATASET),
  - saves a checkpoint per epoch with cargohold.checkpoint into $CARGOHOLD_CHECKPOINT_DIR
    (a named volume: it outlives the container), and resumes from the latest valid one,
  - exports the trained model to the artifacts store ($CARGOHOLD_STORE_MODELS),
  - prints the held-out accuracy.
It also keeps a run log in its own writable layer (/tmp), which the demo shows being lost.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import time
from pathlib import Path

import numpy as np

from cargohold.checkpoint import CheckpointManager, numpy_file


def init_params(rng: np.random.Generator, sizes: list[int]) -> dict[str, np.ndarray]:
    params = {}
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        params[f"w{i}"] = (rng.normal(0, np.sqrt(2.0 / n_in), (n_in, n_out))).astype(np.float32)
        params[f"b{i}"] = np.zeros(n_out, dtype=np.float32)
    return params


def forward(params: dict[str, np.ndarray], x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    layers = len(params) // 2
    activations = [x]
    for i in range(layers):
        z = activations[-1] @ params[f"w{i}"] + params[f"b{i}"]
        activations.append(np.maximum(z, 0) if i < layers - 1 else z)
    return activations[-1], activations


def loss_and_grads(
    params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray
) -> tuple[float, dict[str, np.ndarray]]:
    logits, acts = forward(params, x)
    logits = logits - logits.max(1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(1, keepdims=True)
    loss = float(-np.log(probs[np.arange(len(y)), y] + 1e-9).mean())
    delta = probs
    delta[np.arange(len(y)), y] -= 1
    delta /= len(y)
    grads = {}
    for i in reversed(range(len(params) // 2)):
        grads[f"w{i}"] = acts[i].T @ delta
        grads[f"b{i}"] = delta.sum(0)
        if i:
            delta = (delta @ params[f"w{i}"].T) * (acts[i] > 0)
    return loss, grads


def accuracy(params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    logits, _ = forward(params, x)
    return float((logits.argmax(1) == y).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description="Train the digits network.")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument(
        "--fail-at-epoch",
        type=int,
        default=None,
        help="exit with an error after this epoch once (to show restarts)",
    )
    args = parser.parse_args()

    data_dir = Path(os.environ.get("CARGOHOLD_STORE_DATASET", "data"))
    out_dir = Path(os.environ.get("CARGOHOLD_STORE_MODELS", "artifacts"))
    data = np.load(data_dir / "digits.npz")
    x_train, y_train = data["x_train"], data["y_train"]
    x_test, y_test = data["x_test"], data["y_test"]
    # Hold out the last 10% of the training split to pick the best epoch.
    n_val = len(x_train) // 10
    x_val, y_val = x_train[-n_val:], y_train[-n_val:]
    x_train, y_train = x_train[:-n_val], y_train[:-n_val]

    seed = int(os.environ.get("SEED", "0"))
    rng = np.random.default_rng(seed)
    params = init_params(rng, [x_train.shape[1], args.hidden, args.hidden // 2, 10])
    velocity = {k: np.zeros_like(v) for k, v in params.items()}
    start_epoch = 0

    ckpt = CheckpointManager(keep_last=3, keep_best=1, metric="val_loss", mode="min")
    latest = ckpt.restore_latest()
    if latest is not None:
        state = np.load(latest.files["state.npz"])
        params = {k[2:]: state[k] for k in state.files if k.startswith("p_")}
        velocity = {k[2:]: state[k] for k in state.files if k.startswith("v_")}
        meta = json.loads(latest.read_bytes("meta.json"))
        rng.bit_generator.state = meta["rng"]
        start_epoch = latest.step
        print(f"resumed from epoch {latest.step} ({latest.path})", flush=True)
    else:
        print("starting from scratch", flush=True)

    # Scratch notes in the container's own layer: these die with the container.
    run_log = Path("/tmp/run-log.txt")
    for epoch in range(start_epoch + 1, args.epochs + 1):
        began = time.monotonic()
        order = rng.permutation(len(x_train))
        losses = []
        lr = args.lr * (0.5 * (1 + np.cos(np.pi * (epoch - 1) / args.epochs)))
        for first in range(0, len(order), args.batch):
            idx = order[first : first + args.batch]
            loss, grads = loss_and_grads(params, x_train[idx], y_train[idx])
            losses.append(loss)
            for k in params:
                velocity[k] = 0.9 * velocity[k] - lr * grads[k]
                params[k] += velocity[k]
        val_loss, _ = loss_and_grads(params, x_val, y_val)
        val_acc = accuracy(params, x_val, y_val)
        state = {
            **{f"p_{k}": v for k, v in params.items()},
            **{f"v_{k}": v for k, v in velocity.items()},
        }
        meta = {"epoch": epoch, "rng": rng.bit_generator.state}
        ckpt.save(
            epoch,
            {"state.npz": numpy_file(state), "meta.json": json.dumps(meta).encode()},
            metrics={"val_loss": val_loss, "val_acc": val_acc},
        )
        line = (
            f"epoch {epoch:3d}/{args.epochs}  train loss {np.mean(losses):.4f}  "
            f"val loss {val_loss:.4f}  val acc {val_acc:.3f}  ({time.monotonic() - began:.1f}s)"
            "  checkpoint saved"
        )
        print(line, flush=True)
        with run_log.open("a") as f:
            f.write(line + "\n")
        if args.fail_at_epoch == epoch and latest is None:
            raise SystemExit(f"failing on purpose after epoch {epoch} (--fail-at-epoch)")

    best = ckpt.best()
    if best is not None and best.step != args.epochs:
        state = np.load(best.files["state.npz"])
        params = {k[2:]: state[k] for k in state.files if k.startswith("p_")}
        print(f"exporting the best epoch, {best.step}", flush=True)
    test_acc = accuracy(params, x_test, y_test)
    out_dir.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez(buffer, **params)
    tmp = out_dir / ".model.npz.tmp"
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, out_dir / "model.npz")
    (out_dir / "metrics.json").write_text(json.dumps({"test_accuracy": test_acc}) + "\n")
    print(f"held-out test accuracy: {test_acc:.4f}", flush=True)
    print(f"model written to {out_dir / 'model.npz'}", flush=True)


if __name__ == "__main__":
    main()
