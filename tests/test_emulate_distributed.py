"""lowbit's quantized models under torch's data-parallel engines (DDP,
FSDP1 with use_orig_params True and False, FSDP2's fully_shard per layer
and on the model alone), on CPU with gloo: two ranks, each training on its
half of the global batch (split by samples), give the loss curve, the
evaluation outputs and the final parameters of one process training on
the whole batch, with ``token_blocks="sample"``.

What this guards: a parameter read through ``Tensor.numpy()`` could no
longer be freed by FSDP ("Trying to resize storage that is not
resizable"); a QuantModule that kept parameter tables of its own made
FSDP1's re-registration fail ("attribute 'weight' already exists"); FSDP
gathers new values into the same parameter, often at the same address,
without bumping its version, which the cached rounded weight of the
no_grad path did not see (the FSDP2 "-root" case caught it); and
MultiheadAttention's projections, which take (tokens, batch, features),
blocked "sample" weight gradients along the batch.

Equal within float32 summation order: the ranks add their partial
gradients and losses in another order than one process does (the gradient
of the mean over 2 x 2 samples is (g0 + g1) / 2, and the halves' incoming
gradients are twice one process's, a power-of-two scaling that MX rounding
passes exactly). fp32 DDP without lowbit is the baseline
(``test_fp32_ddp_is_the_baseline``): it differs from one process by up to
about 4e-7 of each tensor's largest magnitude. The quantized runs are held
to rtol=1e-5, with an atol of 1e-5 of each tensor's largest magnitude for
elements that cancel to near zero (fp32 DDP has such elements 20 times
their own size off): 25 times that drift, and three orders below what a
rounding decision that depends on the split changes (MX blocks that
straddle samples move gradients and parameters by 2e-2 to 5e-2,
``test_batch_token_blocks_depend_on_the_split``). A value within 1e-7 of
a rounding boundary could still round differently on another CPU's
summation order; these seeds have none.

One group of two worker processes (this file run as a script) runs every
case, so torch is imported three times in all; the parent computes the
single-process references meanwhile. Every wait is bounded: gloo's
timeout, and the parent kills both ranks as soon as one dies or when the
group overruns its deadline, so a test fails rather than hangs.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

if __name__ != "__main__" and not (dist.is_available() and dist.is_gloo_available()):
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

WORLD = 2
BATCH, TOKENS, VOCAB, WIDTH, HIDDEN, HEADS = 4, 24, 64, 64, 128, 2  # 24 tokens: MX blocks of 32 straddle samples
STEPS, LR = 3, 0.5
FORMATS = {"input": "mxfp8_e4m3", "weight": "mxfp4", "grad_output": "mxfp8_e5m2"}
#: (name, token_blocks or None for the fp32 model, engine)
CASES = [("fp32-ddp", None, "ddp"), ("sample-ddp", "sample", "ddp"), ("sample-fsdp1", "sample", "fsdp1"),
         ("sample-fsdp1-flat", "sample", "fsdp1-flat"), ("sample-fsdp2", "sample", "fsdp2"),
         ("sample-fsdp2-root", "sample", "fsdp2-root"), ("batch-ddp", "batch", "ddp")]
RTOL, ATOL_SHARE = 1e-5, 1e-5
DEADLINE_S, GLOO_TIMEOUT_S = 180, 60


class Net(torch.nn.Module):
    """An embedding, an attention block and a 2-layer MLP over (batch, tokens, features)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, WIDTH)
        self.attn = torch.nn.MultiheadAttention(WIDTH, HEADS, batch_first=True)
        self.up = torch.nn.Linear(WIDTH, HIDDEN)
        self.down = torch.nn.Linear(HIDDEN, WIDTH)
        self.head = torch.nn.Linear(WIDTH, VOCAB)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens)
        h = h + self.attn(h, h, h, need_weights=False)[0]
        h = h + self.down(F.gelu(self.up(h)))
        return self.head(h)


def make_net(token_blocks: str | None) -> Net:
    from lowbit.emulate import QuantSpec, quantize_model

    torch.manual_seed(0)
    net = Net()
    if token_blocks is not None:
        quantize_model(net, QuantSpec(**FORMATS, token_blocks=token_blocks))
    return net


def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, VOCAB, (BATCH, TOKENS), generator=g), torch.randint(0, VOCAB, (BATCH, TOKENS), generator=g)


def loss_of(model: torch.nn.Module, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = model(tokens)
    return F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1))


def train(model: torch.nn.Module, net: Net, tokens, targets, reduce=lambda loss: loss.item()) -> dict:
    """STEPS SGD steps; per step the evaluation logits on the whole batch
    (no_grad: the quantized layers' cached-weight path) and the loss, and
    the gradients of the first step."""
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    record = {"losses": [], "logits": [], "grads": None}
    for step in range(STEPS):
        with torch.no_grad():
            record["logits"].append(model(data()[0]).clone())
        loss = loss_of(model, tokens, targets)
        loss.backward()
        record["losses"].append(reduce(loss.detach()))
        if step == 0:
            record["grads"] = {n: p.grad.detach().clone() for n, p in net.named_parameters() if p.grad is not None}
        optimizer.step()
        optimizer.zero_grad()
    return record


# -- the workers --------------------------------------------------------------------------------

def wrap(net: Net, engine: str) -> torch.nn.Module:
    if engine == "ddp":
        return torch.nn.parallel.DistributedDataParallel(net)
    if engine.startswith("fsdp1"):
        from torch.distributed.fsdp import FullyShardedDataParallel
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy

        units = {type(net.up), type(net.attn)}  # the quantized Linear and attention modules: FSDP units of their own
        return FullyShardedDataParallel(net, use_orig_params=engine == "fsdp1", device_id=torch.device("cpu"),
                                        auto_wrap_policy=ModuleWrapPolicy(units))
    from torch.distributed.fsdp import fully_shard

    if engine == "fsdp2":  # the quantized modules as FSDP2 modules of their own; "fsdp2-root": the model only
        for layer in (net.attn, net.up, net.down, net.head):
            fully_shard(layer)
    return fully_shard(net)


def full_parameters(model: torch.nn.Module, net: Net, engine: str) -> dict[str, torch.Tensor]:
    if engine.startswith("fsdp1"):
        from torch.distributed.fsdp import FullyShardedDataParallel

        with FullyShardedDataParallel.summon_full_params(model, writeback=False):
            return {n.replace("_fsdp_wrapped_module.", ""): p.detach().clone() for n, p in net.named_parameters()}
    if engine.startswith("fsdp2"):
        return {n: p.full_tensor().detach().clone() for n, p in net.named_parameters()}
    return {n: p.detach().clone() for n, p in net.named_parameters()}


def mean_over_ranks(loss: torch.Tensor) -> float:
    total = loss.clone()
    dist.all_reduce(total)
    return total.item() / WORLD


def log(rank: int, what: str) -> None:
    print(f"rank {rank}: {what}, {time.time() - float(os.environ['LOWBIT_T0']):.2f} s after launch", flush=True)


def worker(rank: int, port: int, out: Path) -> None:
    log(rank, "started")
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=GLOO_TIMEOUT_S))
    try:
        log(rank, "group up")
        tokens, targets = data()
        mine = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
        results = {}
        for name, token_blocks, engine in CASES:
            net = make_net(token_blocks)
            model = wrap(net, engine)
            started = time.perf_counter()
            record = train(model, net, tokens[mine], targets[mine], reduce=mean_over_ranks)
            if engine != "ddp":
                record["grads"] = None  # sharded: the final parameters say it
            record["params"] = full_parameters(model, net, engine)
            record["seconds"] = time.perf_counter() - started
            results[name] = record
            log(rank, f"{name} done")
        if rank == 0:
            torch.save(results, out / "results.pt")
    finally:
        dist.destroy_process_group()


# -- the parent ---------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_group(out: Path, commands: list[list[str]], while_waiting=lambda: None, deadline_s: float = DEADLINE_S):
    """Start one process per rank (``commands[rank]``), call ``while_waiting``,
    and wait for all, at most ``deadline_s``; RuntimeError (with the ranks'
    output) as soon as one fails or when time runs out, the others killed."""
    env = {**os.environ, "NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "LOWBIT_T0": repr(time.time())}
    with contextlib.ExitStack() as stack:
        logs = [stack.enter_context(open(out / f"rank{rank}.log", "w+")) for rank in range(len(commands))]
        procs = [subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
                 for command, log in zip(commands, logs)]
        try:
            value = while_waiting()
            end = time.monotonic() + deadline_s
            while any(p.poll() is None for p in procs):
                failed = [p for p in procs if p.poll() not in (None, 0)]
                if failed or time.monotonic() > end:
                    why = "a rank failed" if failed else f"the ranks ran past {deadline_s} s"
                    raise RuntimeError(f"{why}:\n" + report(procs, logs))
                time.sleep(0.05)
            if any(p.returncode for p in procs):
                raise RuntimeError("a rank failed:\n" + report(procs, logs))
            return value
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                p.wait()


def report(procs, logs) -> str:
    parts = []
    for rank, (p, log) in enumerate(zip(procs, logs)):
        log.flush()
        log.seek(0)
        parts.append(f"--- rank {rank} (exit {p.poll()}) ---\n{log.read()[-4000:]}")
    return "\n".join(parts)


def single_process() -> dict:
    """The references: one process, the whole batch; and the gradients DDP
    averages under token_blocks="batch" (each half blocked on its own)."""
    tokens, targets = data()
    refs = {}
    for blocks in (None, "sample", "batch"):
        net = make_net(blocks)
        refs[blocks] = train(net, net, tokens, targets)
        refs[blocks]["params"] = {n: p.detach().clone() for n, p in net.named_parameters()}
    net = make_net("batch")
    halves = []
    for part in (slice(0, BATCH // 2), slice(BATCH // 2, BATCH)):
        net.zero_grad()
        loss_of(net, tokens[part], targets[part]).backward()
        halves.append({n: p.grad.clone() for n, p in net.named_parameters()})
    refs["batch-halves"] = {n: (halves[0][n] + halves[1][n]) / 2 for n in halves[0]}
    return refs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("distributed")
    started = time.perf_counter()
    port = free_port()
    commands = [[sys.executable, __file__, str(rank), str(port), str(out)] for rank in range(WORLD)]
    refs = run_group(out, commands, single_process)
    results = torch.load(out / "results.pt")
    print(f"\ndistributed group: {time.perf_counter() - started:.1f} s; per case (rank 0): "
          + ", ".join(f"{name} {r['seconds']:.2f} s" for name, r in results.items()))
    return results, refs


def close(actual, expected, name: str = "") -> None:
    actual, expected = torch.as_tensor(actual), torch.as_tensor(expected)
    atol = ATOL_SHARE * float(expected.abs().max()) if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=RTOL, atol=atol, msg=lambda m: f"{name}: {m}")


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def check_matches(record: dict, ref: dict) -> None:
    close(record["losses"], ref["losses"], "losses")
    for step, (logits, expected) in enumerate(zip(record["logits"], ref["logits"])):
        close(logits, expected, f"evaluation logits before step {step}")
    assert set(record["params"]) == set(ref["params"])
    for name, value in record["params"].items():
        close(value, ref["params"][name], name)


@pytest.mark.parametrize("case", [c[0] for c in CASES if c[1] == "sample"])
def test_sample_token_blocks_match_one_process(runs, case):
    """DDP, FSDP1 (both parameter modes) and FSDP2 (per layer, and on the
    model alone) over lowbit's quantized layers, token_blocks="sample": the
    loss curve, the evaluation outputs (the cached rounded weights, which
    must see the values FSDP gathers into the same parameter without
    bumping its version) and the final parameters of one process on the
    whole batch; under DDP, the first step's gradients too."""
    results, refs = runs
    check_matches(results[case], refs["sample"])
    if results[case]["grads"] is not None:
        for name, grad in results[case]["grads"].items():
            close(grad, refs["sample"]["grads"][name], name)


def test_fp32_ddp_is_the_baseline(runs):
    """The model without lowbit: DDP gives one process's results, drifting by
    float32 summation order only (up to about 4e-7 of each tensor's largest
    magnitude), the drift RTOL allows for."""
    results, refs = runs
    record, ref = results["fp32-ddp"], refs[None]
    check_matches(record, ref)
    drift = max(relative_difference(g, ref["grads"][n]) for n, g in record["grads"].items())
    assert drift < RTOL / 4, drift


def test_batch_token_blocks_depend_on_the_split(runs):
    """token_blocks="batch": the weight gradients' MX blocks run over the
    flattened tokens of each rank's batch (24 tokens a sample, blocks of
    32 that straddle samples), so DDP's gradients are the average of the
    two halves' gradients, each blocked on its own, and differ from one
    process's; the bias and embedding gradients (no blocked product) agree."""
    results, refs = runs
    grads, single, halves = results["batch-ddp"]["grads"], refs["batch"]["grads"], refs["batch-halves"]
    for name, grad in grads.items():
        close(grad, halves[name], name)  # what DDP computes, exactly
        if name.endswith("weight") and name != "embed.weight":
            assert relative_difference(grad, single[name]) > 1e-3, name
        else:
            close(grad, single[name], name)
    sample = results["sample-ddp"]["grads"]
    assert max(relative_difference(g, refs["sample"]["grads"][n]) for n, g in sample.items()) < RTOL


def test_a_dead_rank_fails_the_group_at_once(tmp_path):
    """The harness: when a rank dies, the group fails at once and the other
    rank (here asleep; in training, waiting on the dead one in a collective)
    is killed, rather than left to gloo's timeout."""
    commands = [[sys.executable, "-c", "import time; time.sleep(60)"], [sys.executable, "-c", "raise SystemExit(3)"]]
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="a rank failed"):
        run_group(tmp_path, commands, deadline_s=30)
    assert time.monotonic() - started < 20


if __name__ == "__main__":
    worker(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
