"""The TPU pod compile check: real TPU programs, compiled by libtpu on this CPU."""

import json
import os
import subprocess
import sys

import pytest
from conftest import require

from deit_jax.bench import hlo_stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pod_compile(*args, check=True):
  out = subprocess.run([sys.executable, "-m", "deit_jax.bench.pod_compile", *args],
                       check=False, cwd=ROOT, capture_output=True, text=True,
                       timeout=1200)
  if check:
    assert out.returncode == 0, out.stderr[-3000:]
  return out


def _result(out) -> dict:
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def libtpu():
  return require("libtpu")


# As shipped (slow: 1.5-2 CPU minutes; launch/rehearse_pod.py's stage 0 compiles it too),
# and in every run with 2 of its 12 blocks (~35 s): the same program but for the depth.
@pytest.mark.parametrize("depth", [2, pytest.param(None, marks=pytest.mark.slow)])
def test_deit_tiny_recipe_compiles_for_v4_32_and_fits(libtpu, depth):
  # the train step only: the eval step is compiled in the next test
  r = _result(_pod_compile("--config=configs/deit_tiny.py", "--topology=v4-32",
                           "--search=false", "--steps=train", "--json",
                           *([f"--config.model.depth={depth}"] if depth else [])))
  assert r["chips"] == 16 and r["device_kind"] == "TPU v4" and r["mesh"]["data"] == 16
  train = r["steps"]["train"]
  assert train["fits"] and 0 < train["memory_bytes"]["total"] < 32 * 2 ** 30, train
  # the compiled program's FLOPs are the model's (3 x forward for training), within 5%
  assert train["xla_flops_per_image"] == pytest.approx(train["analytic_flops_per_image"],
                                                       rel=0.05)
  # data parallel: the gradients are all-reduced, nothing is gathered
  assert train["hlo"]["collectives"]["all-reduce"]["count"] >= 1
  assert "all-gather" not in train["hlo"]["collectives"]
  assert train["estimated_step_s"] > 0 and 0 < train["estimated_mfu"] < 1


def test_fsdp_state_per_chip_is_a_fraction_of_data_parallel(libtpu):
  """Parameters + AdamW moments + EMA per chip, i.e. the non-batch arguments of the
  compiled train step, with the state sharded over 16 chips vs replicated on each. A
  2-block DeiT of DeiT-Ti's width (192) on 28x28 inputs compiles in seconds; the width
  matters: TPU tiles pad narrow shards (a 96-wide model measures 0.19, DeiT-Ti's 0.11,
  where unpadded shapes give 0.065)."""
  common = ["--config=configs/fashion_mnist_deit_tiny.py", "--topology=v4-32",
            "--search=false", "--json", "--config.model.depth=2", "--config.batch_size=64",
            "--config.model.embed_dim=192"]
  dp = _result(_pod_compile(*common))["steps"]
  assert dp["eval"]["fits"] and dp["eval"]["xla_flops_per_image"] == pytest.approx(
      dp["eval"]["analytic_flops_per_image"], rel=0.05)
  dp = dp["train"]
  fsdp = _result(_pod_compile(*common, "--steps=train", "--config.mesh.data=1",
                              "--config.mesh.fsdp=-1"))["steps"]["train"]
  assert dp["memory_bytes"]["of_arguments_batch"] == fsdp["memory_bytes"]["of_arguments_batch"]
  ratio = fsdp["memory_bytes"]["of_arguments_state"] / dp["memory_bytes"]["of_arguments_state"]
  assert ratio <= 0.15, ratio
  # FSDP gathers parameters; with the residual stream pinned to the batch split
  # (sharding.constrain) it reduces no more than data parallelism does (3.6 MB: the
  # gradients) and moves no activations between chips. Unpinned, XLA split part of the
  # computation along the sharded embedding: 13.9 MB all-reduced, 13 all-to-alls of 2 MB.
  collectives = fsdp["hlo"]["collectives"]
  assert "all-gather" in collectives
  assert collectives["all-reduce"]["bytes"] <= 1.01 * dp["hlo"]["collectives"]["all-reduce"][
      "bytes"], collectives
  assert collectives.get("all-to-all", {}).get("bytes", 0) < 10_000, collectives


def test_bad_topology_and_indivisible_batch_are_one_line_errors():
  for args, message in (
      (["--topology=v4-33"], "unknown TPU topology"),
      (["--topology=v5e-16", "--config.batch_size=1000"], "not divisible by the 16"),
  ):
    out = _pod_compile("--config=configs/deit_tiny.py", *args, check=False)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2, out.stderr[-2000:]
    assert lines[-1].startswith("error: ") and message in lines[-1], lines[-3:]
    assert "Traceback" not in out.stderr


def test_hlo_stats_counts_kernels_not_fused_ops():
  text = """\
HloModule m

%fused_computation (p: f32[4,8]) -> f32[8,4] {
  %p = f32[4,8]{1,0} parameter(0)
  ROOT %transpose.1 = f32[8,4]{1,0} transpose(%p), dimensions={1,0}
}

%add (x: bf16[], y: bf16[]) -> bf16[] {
  %x = bf16[] parameter(0)
  %y = bf16[] parameter(1)
  ROOT %sum = bf16[] add(%x, %y)
}

ENTRY %main (a: f32[4,8], b: bf16[16]) -> (f32[8,4], bf16[16], f32[2]) {
  %a = f32[4,8]{1,0} parameter(0)
  %b = bf16[16]{0} parameter(1)
  %fusion = f32[8,4]{1,0} fusion(%a), kind=kLoop, calls=%fused_computation
  %copy.1 = f32[4,8]{0,1} copy(%a)
  %all-reduce = bf16[16]{0} all-reduce(%b), replica_groups={}, to_apply=%add
  %all-gather-start = (bf16[16]{0}, bf16[64]{0}) all-gather-start(%b), dimensions={0}
  %all-gather-done = bf16[64]{0} all-gather-done(%all-gather-start)
  %copy-start = (f32[2]{0}, f32[2]{0:S(1)}, u32[]) copy-start(%a)
  %cc = f32[64]{0} custom-call(%a, %a), custom_call_target="ConcatBitcast"
  ROOT %t = (f32[8,4]{1,0}, bf16[16]{0}) tuple(%fusion, %all-reduce)
}
"""
  stats = hlo_stats.analyze(text)
  assert stats["collectives"] == {"all-reduce": {"count": 1, "bytes": 32.0},
                                  "all-gather": {"count": 1, "bytes": 128.0}}
  # a fusion whose root is a transpose is a layout kernel, as is a copy outside fusions
  assert stats["transposes"] == 1 and stats["transposes_bytes"] == 128
  assert stats["copies"] == 1 and stats["copies_bytes"] == 128
  assert stats["async_copies"] == 1 and stats["custom_calls"] == {"ConcatBitcast": 1}


def test_pod_table_per_host_columns():
  """The pod table's per-host feed: images/s over the slice's hosts (4 chips each), the
  input cores at the given images per CPU-second, and the MB/s of ~110 KB records."""
  from deit_jax.bench import pod_table
  cell = {"model": "deit_base_distilled_patch16_224", "batch_size": 1024, "chips": 16,
          "remat": False, "search": [],
          "steps": {"train": {"memory_bytes": {"total": 2 ** 33, "temporaries": 2 ** 32,
                                               "of_arguments_batch": 2 ** 28},
                              "capacity_bytes": 2 ** 35, "estimated_step_s": 0.0884,
                              "estimated_images_per_s": 11586.0, "estimated_mfu": 0.28}}}
  row = pod_table.table({("configs/deit_base.py", "v4-32"): cell}, 182.0).splitlines()[-1]
  assert row.endswith("| 28% | 4 | 2,896 | 16 | 319 |"), row
  empty = pod_table.table({("configs/deit_base.py", "v4-32"): None}).splitlines()[-1]
  assert empty.count("...") == 10
