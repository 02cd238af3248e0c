"""Top-level sweep functions for the sweep tests (importable by spawned workers)."""

import os
import time
from pathlib import Path


def record_call(spec: dict) -> dict:
    """Log each call in ``spec['log']`` so a test can count what really ran."""
    log = Path(spec["log"])
    log.mkdir(parents=True, exist_ok=True)
    (log / f"{spec['x']}-{spec['seed']}-{os.getpid()}-{time.monotonic_ns()}").touch()
    if spec.get("sleep"):
        time.sleep(spec["sleep"])
    if spec.get("fail_on") == [spec["x"], spec["seed"]] and not (log / "allow").exists():
        raise RuntimeError(f"planned failure at x={spec['x']} seed={spec['seed']}")
    return {"value": spec["x"] * 10 + spec["seed"]}


def write_checkpoint(spec: dict) -> dict:
    """Like ``record_call``, and name a file it wrote (as ``train_point`` names its checkpoint)."""
    out = Path(spec["log"]).parent / f"ckpt-{spec['x']}-{spec['seed']}"
    record_call(spec)
    out.write_text("weights")
    return {"checkpoint": str(out), "value": spec["x"]}
