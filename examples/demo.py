"""zstore demo: train a small model, checkpoint it, read a slice lazily, restore.

    python examples/demo.py                  # an in-process S3 server (moto), over HTTP
    python examples/demo.py ./demo-ckpt      # a local folder (or any fsspec URL)
"""

from __future__ import annotations

import sys

import torch

import zstore
from zstore._cli import main as zstore_cli
from zstore.testing import MotoS3


def start_embedded_s3() -> tuple[str, dict]:
    """An S3 server in this process (moto), reached through s3fs over real HTTP."""
    server = MotoS3()
    return f"s3://{server.new_bucket('demo')}/run1/step-100", server.storage_options


def dotted(options: dict, prefix: str = "") -> list[tuple[str, str]]:
    """storage_options as the CLI's dotted ``-o key=value`` pairs."""
    pairs = []
    for key, value in options.items():
        if isinstance(value, dict):
            pairs += dotted(value, f"{prefix}{key}.")
        else:
            pairs.append((f"{prefix}{key}", str(value)))
    return pairs


def train(steps: int = 20) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Embedding(4096, 256), torch.nn.Flatten(), torch.nn.Linear(256 * 8, 512),
        torch.nn.GELU(), torch.nn.Linear(512, 4096))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(steps):
        tokens = torch.randint(0, 4096, (16, 8))
        loss = torch.nn.functional.cross_entropy(model(tokens), tokens[:, 0])
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(f"trained {steps} steps, loss {loss.item():.3f}")
    return model, opt


def main() -> None:
    if len(sys.argv) > 1:
        url, options = f"{sys.argv[1].rstrip('/')}/step-100", {}
    else:
        url, options = start_embedded_s3()
    model, opt = train()
    state = {"model": model.state_dict(), "optim": opt.state_dict(), "step": 100}

    # The embedding is looked up by rows at inference: plan for it, and show the plan.
    access = {"model/0.weight": "rows"}
    # plan() takes a URL for its backend only with a protocol: a local path is "local"
    plan = zstore.plan(state, access=access, backend=url if "://" in url else "local")
    print("\n" + "\n".join(str(plan).splitlines()[:5]) + "\n...\n" + str(plan).splitlines()[-1])
    info = zstore.save(state, url, storage_options=options, metadata={"step": 100},
                       overwrite=True, access=access)
    print(f"\nsaved {info}\n")  # the same counts as `zstore info` below

    flags = [arg for key, value in dotted(options) for arg in ("-o", f"{key}={value}")]
    print(f"$ zstore info {url} {' '.join(flags)}".rstrip())
    zstore_cli(["info", url, *flags])

    with zstore.io_stats() as io_open:
        ckpt = zstore.open(url, storage_options=options)
    embed = ckpt["model/0.weight"]
    with zstore.io_stats() as io_rows:
        rows = embed[1000:1004]
    print(f"\nopen: {io_open}")
    print(f"embedding rows 1000:1004 of {embed.shape} {embed.dtype}: {io_rows}, "
          f"{io_rows.bytes_read / 2**10:.0f} KiB read of "
          f"{embed.stored_nbytes / 2**10:.0f} KiB stored")
    assert torch.equal(torch.from_numpy(rows), model[0].weight.detach()[1000:1004])

    restored = zstore.load(url, storage_options=options)
    fresh = torch.nn.Sequential(
        torch.nn.Embedding(4096, 256), torch.nn.Flatten(), torch.nn.Linear(256 * 8, 512),
        torch.nn.GELU(), torch.nn.Linear(512, 4096))
    fresh.load_state_dict(restored["model"])
    fresh_opt = torch.optim.AdamW(fresh.parameters())
    fresh_opt.load_state_dict(restored["optim"])
    same = all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                fresh.state_dict().values()))
    print(f"\nrestored step {restored['step']}: model and optimizer identical: {same}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
