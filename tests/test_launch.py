"""launch/tpu_vm.sh and launch/gpu_multinode.sh: the gcloud/srun commands their --dry-run
prints (what runs without it, checked with a fake gcloud), the remote shell commands run
for real in a sandbox (quoting, nohup, the one-job guard, SIGTERM then SIGKILL on stop),
one-line errors, shellcheck; how a process joins a multi-process job (deit_jax.processes);
the version pins of launch/constraints.txt. Fast, no network, no cloud."""

import json
import os
import pathlib
import shlex
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TPU = ROOT / "launch" / "tpu_vm.sh"
GPU = ROOT / "launch" / "gpu_multinode.sh"
BASE = ["--name=deit-test", "--zone=us-central2-b"]
SPACED = "--config.note=two words, 'quoted' $HOME"  # must reach the trainer verbatim


GUARD = {}


@pytest.fixture(scope="module", autouse=True)
def _no_real_gcloud(tmp_path_factory):
  """Every test's PATH starts with a gcloud/srun that fail loudly: no test may reach a cloud."""
  guard = tmp_path_factory.mktemp("guard")
  for tool in ("gcloud", "srun"):
    (guard / tool).write_text(f"#!/bin/sh\necho 'test ran the real {tool}' >&2\nexit 97\n")
    (guard / tool).chmod(0o755)
  GUARD["PATH"] = f"{guard}:{os.environ['PATH']}"


def _env(**extra):
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("DEIT_TPU_", "DEIT_GPU_", "SLURM_", "PYTHON"))}
  env.update(GUARD, **extra)
  return env


def _run(script, *args, env=None, check=True):
  p = subprocess.run(["bash", str(script), *args], capture_output=True, text=True,
                     env=env or _env(), timeout=60)
  if check:
    assert p.returncode == 0, p.stderr
  return p


def _dry(*args, env=None):
  """The commands `tpu_vm.sh --dry-run` prints, each as an argv (comments dropped)."""
  out = _run(TPU, "--dry-run", *args, env=env).stdout  # first: after "--" it is passed on
  return [shlex.split(line) for line in out.splitlines() if not line.startswith("#")]


def _remote(argv):
  """The --command string of a `gcloud compute tpus tpu-vm ssh` argv."""
  assert argv[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "deit-test"], argv
  assert "--zone=us-central2-b" in argv
  return next(a.split("=", 1)[1] for a in argv if a.startswith("--command="))


@pytest.mark.parametrize("accelerator, gcloud_type, version", [
    ("v4-32", "v4-32", "tpu-ubuntu2204-base"),
    ("v5e-64", "v5litepod-64", "v2-alpha-tpuv5-lite"),
    ("v5litepod-8", "v5litepod-8", "v2-alpha-tpuv5-lite"),
    ("v5p-128", "v5p-128", "v2-alpha-tpuv5"),
    ("v6e-64", "v6e-64", "v2-alpha-tpuv6e"),
])
def test_create_picks_runtime_version_by_accelerator(accelerator, gcloud_type, version):
  assert _dry("create", *BASE, f"--accelerator={accelerator}") == [[
      "gcloud", "compute", "tpus", "tpu-vm", "create", "deit-test", "--zone=us-central2-b",
      f"--accelerator-type={gcloud_type}", f"--version={version}"]]


def test_create_with_autocheckpoint_uses_gcloud_alpha():
  assert _dry("create", *BASE, "--autocheckpoint", "--spot") == [[
      "gcloud", "alpha", "compute", "tpus", "tpu-vm", "create", "deit-test",
      "--zone=us-central2-b", "--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base",
      "--spot", "--autocheckpoint-enabled"]]
  assert _dry("create", *BASE, "--queued", env=_env(DEIT_TPU_AUTOCHECKPOINT="1"))[0][:6] == [
      "gcloud", "alpha", "compute", "tpus", "queued-resources", "create"]


def test_create_options_and_environment_fallbacks():
  env = _env(DEIT_TPU_NAME="deit-test", DEIT_TPU_ZONE="us-central2-b",
             DEIT_TPU_PROJECT="my-proj", DEIT_TPU_SPOT="1")
  assert _dry("create", "--version", "custom-v", env=env) == [[
      "gcloud", "compute", "tpus", "tpu-vm", "create", "deit-test", "--zone=us-central2-b",
      "--project=my-proj", "--accelerator-type=v4-32", "--version=custom-v", "--spot"]]
  assert _dry("create", *BASE, "--preemptible")[0][-1] == "--preemptible"
  assert _dry("create", *BASE, "--queued", "--spot", "--accelerator=v5e-16") == [[
      "gcloud", "compute", "tpus", "queued-resources", "create", "deit-test",
      "--node-id=deit-test", "--zone=us-central2-b", "--accelerator-type=v5litepod-16",
      "--runtime-version=v2-alpha-tpuv5-lite", "--spot"]]


def test_setup_ships_head_installs_and_checks_devices():
  archive, scp, rm, install, check = _dry("setup", *BASE, "--project=p")
  assert archive[:2] == ["git", "-C"] and archive[3:6] == ["archive", "--format=tar.gz",
                                                           "--prefix=deit-jax/"]
  assert archive[-1] == "HEAD" and archive[-2] == scp[5] == rm[-1]
  assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"]
  assert scp[6:] == ["deit-test:deit-jax-src.tar.gz", "--zone=us-central2-b", "--project=p",
                     "--worker=all"]
  for argv in (install, check):
    assert "--worker=all" in argv and "--project=p" in argv
  install = _remote(install)
  assert "tar -xzf ~/deit-jax-src.tar.gz -C ~" in install
  # launch/setup.sh installs, with the pins of launch/constraints.txt
  assert install.endswith("; PYTHON=python3.11 DEIT_JAX_LIST_DEVICES=0 bash launch/setup.sh tpu")
  assert "jax.device_count()" in _remote(check)


def test_setup_archive_is_the_committed_tree(tmp_path):
  archive = _dry("setup", *BASE)[0]
  archive[archive.index("-o") + 1] = str(tmp_path / "src.tar.gz")
  subprocess.run(archive, check=True, timeout=60)
  names = subprocess.run(["tar", "-tzf", str(tmp_path / "src.tar.gz")], check=True,
                         capture_output=True, text=True).stdout.split()
  assert "deit-jax/deit_jax/main.py" in names and "deit-jax/setup.cfg" in names
  assert not any(n.startswith("deit-jax/.venv/") for n in names)


def test_setup_from_a_git_url():
  install, _ = _dry("setup", *BASE, "--repo=https://example.com/me/deit jax.git",
                    "--ref=v1", "--extras=tpu,test", "--python=python3.12")
  install = _remote(install)
  assert install.startswith("set -e; ")
  assert "|| git clone -q 'https://example.com/me/deit jax.git' ~/deit-jax" in install
  assert "fetch -q origin v1; git -C ~/deit-jax checkout -q --detach FETCH_HEAD" in install
  assert "install -y python3.12 python3.12-venv" in install
  assert "bash launch/setup.sh tpu,test" in install


def test_train_checks_for_a_live_trainer_then_starts_one_per_worker():
  state, check, start = _dry("train", *BASE, "--bucket=gs://my-bucket/",
                             "--config.model.name=x", "--env", "XLA_FLAGS=--xla_a --xla_b",
                             "--", SPACED)
  assert state[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "describe", "deit-test"]
  assert "--format=value(state)" in state
  assert "--worker=all" in check and "--worker=all" in start
  assert "ALIVE:$(hostname)" in _remote(check)
  words = shlex.split(_remote(start))
  assert "TFDS_DATA_DIR=gs://my-bucket/tensorflow_datasets" in words
  assert "XLA_FLAGS=--xla_a --xla_b" in words
  i = words.index("deit_jax.main")
  assert words[i - 3:i + 7] == [
      "nohup", ".venv/bin/python", "-m", "deit_jax.main", "--config=configs/deit_base.py",
      "--workdir=gs://my-bucket/deit-jax/deit_base", "--multihost",
      "--config.model.name=x", SPACED, ">>"]
  assert "log=logs/train_$(hostname).log;" in words
  words = shlex.split(_remote(_dry("train", *BASE, "--config=configs/x.py",
                                   "--workdir=gs://b/runs/x", "--data-dir=gs://b/tfds")[2]))
  assert {"TFDS_DATA_DIR=gs://b/tfds", "--config=configs/x.py",
          "--workdir=gs://b/runs/x"} <= set(words)


def test_precompute_starts_the_teacher_on_every_worker():
  _, check, start = _dry("precompute", *BASE, "--bucket=b", "--", "--storage=topk")
  assert "ALIVE:$(hostname)" in _remote(check)
  words = shlex.split(_remote(start))
  i = words.index("deit_jax.teacher")
  assert words[i - 3:i + 9] == [
      "nohup", ".venv/bin/python", "-m", "deit_jax.teacher", "precompute",
      "--config=configs/regnety_160_teacher.py", "--checkpoint=gs://b/models/regnety_160",
      "--split=train", "--out=gs://b/teacher_logits/regnety160", "--multihost",
      "--storage=topk", ">>"]
  assert "TFDS_DATA_DIR=gs://b/tensorflow_datasets" in words
  assert "log=logs/precompute_$(hostname).log;" in words
  words = shlex.split(_remote(_dry("precompute", *BASE, "--config=configs/deit_base.py",
                                   "--teacher=/m", "--logits=gs://c/l", "--data-dir=gs://c/d")[2]))
  assert {"--config=configs/deit_base.py", "--checkpoint=/m", "--out=gs://c/l",
          "TFDS_DATA_DIR=gs://c/d"} <= set(words)


def test_stage_copies_the_dataset_on_every_worker_and_train_reads_it():
  _, check, start = _dry("stage", *BASE, "--bucket=b", "--local-data-dir=/dev/shm/tfds")
  assert "ALIVE:$(hostname)" in _remote(check) and "--worker=all" in start
  words = shlex.split(_remote(start))
  i = words.index("deit_jax.data.stage")
  assert words[i - 3:i + 5] == [
      "nohup", ".venv/bin/python", "-m", "deit_jax.data.stage", "--dataset=imagenet2012",
      "--data_dir=gs://b/tensorflow_datasets", "--local_dir=/dev/shm/tfds", ">>"]
  assert "log=logs/stage_$(hostname).log;" in words
  words = shlex.split(_remote(_dry("train", *BASE, "--bucket=b",
                                   env=_env(DEIT_TPU_LOCAL_DATA_DIR="/dev/shm/tfds"))[2]))
  assert "--config.data_dir=/dev/shm/tfds" in words
  p = _run(TPU, "stage", *BASE, "--bucket=b", "--dry-run", check=False)
  assert p.returncode == 2 and "missing --local-data-dir" in p.stderr


@pytest.mark.parametrize("args, expected", [
    (["logs"], ["--worker=0"]),
    (["logs", "--worker=3"], ["--worker=3"]),
    (["ssh"], ["--worker=0"]),
    (["ssh", "--worker", "all", "--internal-ip", "--", "ls", "-la"],
     ["--internal-ip", "--worker=all", "--command=ls -la"]),
    (["stop"], ["--worker=all"]),
])
def test_logs_ssh_stop(args, expected):
  (argv,) = _dry(args[0], *BASE, *args[1:])
  assert argv[:7] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "deit-test",
                      "--zone=us-central2-b"]
  assert all(word in argv for word in expected), argv
  if args == ["stop"]:
    assert "pkill -TERM -f" in _remote(argv) and "seq 600" in _remote(argv)
  if args[0] == "logs":  # the newest log of the worker: train or precompute
    assert "ls -t ~/deit-jax/logs/*_$(hostname).log" in _remote(argv)


def test_status_and_delete():
  describe, alive = _dry("status", *BASE)
  assert describe[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "describe", "deit-test"]
  assert "ALIVE:$(hostname)" in _remote(alive)
  assert _dry("delete", *BASE) == [["gcloud", "compute", "tpus", "tpu-vm", "delete",
                                    "deit-test", "--zone=us-central2-b", "--quiet"]]
  assert _dry("delete", *BASE, "--queued") == [[
      "gcloud", "compute", "tpus", "queued-resources", "delete", "deit-test",
      "--zone=us-central2-b", "--force", "--quiet"]]


@pytest.mark.parametrize("args, message", [
    ([], "missing subcommand"),
    (["launch", *BASE], "unknown subcommand 'launch'"),
    (["create", "--zone=z"], "missing --name"),
    (["create", "--name=deit"], "missing --zone"),
    (["create", "--name=Bad_Name", "--zone=z"], "bad TPU name"),
    (["train", *BASE], "missing --bucket"),
    (["train", *BASE, "--bucket=b", "--workdir=/tmp/run"], "--workdir must be gs://"),
    (["train", *BASE, "--bucket=b", "--env=1X=2"], "bad --env"),
    (["create", *BASE, "--accelerator=tpu7-8"], "no default runtime version"),
    (["create", *BASE, "--spot", "--preemptible"], "exclude each other"),
    (["create", *BASE, "--queued", "--preemptible"], "does not combine with --queued"),
    (["setup", *BASE, "--ref=main"], "--ref needs --repo"),
    (["logs", *BASE, "--worker=first"], "bad --worker"),
    (["create", *BASE, "--frobnicate"], "unknown option --frobnicate"),
    (["create", *BASE, "--name"], "--name needs a value"),
    (["create", *BASE, "--spot=yes"], "--spot takes no value"),
    (["stop", *BASE, "--stop-timeout=soon"], "bad --stop-timeout"),
    (["precompute", *BASE, "--teacher=gs://b/m"], "missing --bucket"),
    (["precompute", *BASE, "--bucket=b", "--logits=/tmp/l"], "--logits must be gs://"),
])
def test_bad_input_is_a_one_line_error(args, message):
  p = _run(TPU, "--dry-run", *args, check=False)
  assert p.returncode == 2 and p.stdout == ""
  assert len(p.stderr.splitlines()) == 1, p.stderr
  assert p.stderr.startswith("tpu_vm.sh: error: ") and message in p.stderr, p.stderr


def test_help_lists_every_setting():
  text = _run(TPU, "--help").stdout
  words = ("create setup precompute train logs ssh stop status delete --name --zone --project"
           " --accelerator --version --spot --preemptible --queued --autocheckpoint --bucket"
           " --data-dir --config --workdir --teacher --logits --env --repo --ref --python"
           " --extras --worker --stop-timeout --internal-ip --dry-run DEIT_TPU_NAME"
           " DEIT_TPU_ZONE v4-32 tpu-ubuntu2204-base v2-alpha-tpuv5-lite configs/deit_base.py"
           " configs/regnety_160_teacher.py launch/constraints.txt")
  assert [word for word in words.split() if word not in text] == []
  assert "--coordinator" in _run(GPU, "--help").stdout


def _fake_gcloud(tmp_path, state="READY", workers="idle:t1-w-0", **extra_env):
  """(environment, log): a gcloud on PATH that appends its argv to the log (JSON lines),
  prints ``state`` for describe and ``workers`` for the live-job check."""
  (tmp_path / "bin").mkdir()
  log = tmp_path / "gcloud.jsonl"
  (tmp_path / "bin" / "gcloud").write_text(
      f"#!{sys.executable}\nimport json, sys\n"
      f"open({str(log)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
      f"if 'describe' in sys.argv: print({state!r})\n"
      f"if any('ALIVE:' in a for a in sys.argv): print({workers!r})\n")
  (tmp_path / "bin" / "gcloud").chmod(0o755)
  env = _env(**extra_env)
  env["PATH"] = f"{tmp_path / 'bin'}:{env['PATH']}"
  return env, log


@pytest.mark.parametrize("state, workers, calls, message", [
    ("READY", "idle:t1-w-0\nidle:t1-w-1", 3, None),
    ("READY", "ALIVE:t1-w-0 deit_jax.main\nALIVE:t1-w-1 deit_jax.main", 2,
     "already running on t1-w-0 t1-w-1"),
    # one worker rebooted (maintenance): its trainer is gone, the other one's hangs
    ("READY", "idle:t1-w-0\nALIVE:t1-w-1 deit_jax.main", 2,
     "runs on t1-w-1 but not on t1-w-0 (a worker rebooted"),
    ("REPAIRING", "", 1, "TPU 'deit-test' is REPAIRING, not READY"),
    ("PREEMPTED", "", 1, "is PREEMPTED: 'delete', 'create' and 'setup' it"),
])
def test_without_dry_run_gcloud_gets_what_dry_run_prints(tmp_path, state, workers, calls,
                                                         message):
  """A fake gcloud records its argv and answers the state and live-job checks: train runs
  exactly the dry-run's commands, or stops after the check that failed, with one line."""
  env, log = _fake_gcloud(tmp_path, state, workers)
  args = ["train", *BASE, "--bucket=b", "--config.model.name=x", "--", SPACED]
  p = _run(TPU, *args, env=env, check=False)
  recorded = [["gcloud", *json.loads(line)] for line in log.read_text().splitlines()]
  assert recorded == _dry(*args)[:calls]
  if message is None:
    assert p.returncode == 0, p.stderr
  else:
    assert p.returncode == 2 and len(p.stderr.splitlines()) == 1, p.stderr
    assert message in p.stderr, p.stderr


def test_remote_commands_in_a_sandbox(tmp_path):
  """train -> (a second job refused) -> stop; a trainer deaf to SIGTERM -> stop kills it;
  precompute -> stop: the remote strings run by a real bash with HOME in tmp_path and fake
  jobs, in a private PID namespace so that pgrep/pkill see only the sandbox's processes."""
  if subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"],
                    capture_output=True).returncode != 0:
    pytest.skip("needs `unshare --pid` (root or user namespaces) to isolate pgrep/pkill")
  repo = tmp_path / "deit-jax"
  (repo / "deit_jax" / "teacher").mkdir(parents=True)
  (repo / "deit_jax" / "__init__.py").write_text("")
  (repo / "deit_jax" / "main.py").write_text(
      "import json, os, signal, sys, time\n"
      "home = os.environ['HOME']\n"
      "if os.environ.get('FAKE_DEAF'):\n"
      "  signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
      "else:\n"
      "  signal.signal(signal.SIGTERM, lambda *_: (open(home + '/sigterm', 'w').close(),"
      " sys.exit(0)))\n"
      "json.dump({'argv': sys.argv[1:], 'data': os.environ.get('TFDS_DATA_DIR')},"
      " open(home + '/argv.tmp', 'w'))\n"
      "os.rename(home + '/argv.tmp', home + '/argv.json')\n"
      "print('fake trainer up', flush=True)\n"
      "time.sleep(60)\n")
  (repo / "deit_jax" / "teacher" / "__init__.py").write_text("")
  (repo / "deit_jax" / "teacher" / "__main__.py").write_text(
      "import os, sys, time\n"
      "open(os.environ['HOME'] + '/teacher_up', 'w').write(' '.join(sys.argv[1:]))\n"
      "time.sleep(60)\n")
  (repo / ".venv" / "bin").mkdir(parents=True)
  (repo / ".venv" / "bin" / "python").symlink_to(sys._base_executable)
  commands = {
      "train": _dry("train", *BASE, "--bucket=b", "--config.model.name=x", "--", SPACED)[2],
      "deaf": _dry("train", *BASE, "--bucket=b", "--env=FAKE_DEAF=1")[2],
      "precompute": _dry("precompute", *BASE, "--bucket=b")[2],
      "alive": _dry("status", *BASE)[1], "stop": _dry("stop", *BASE)[0],
      "stop1": _dry("stop", *BASE, "--stop-timeout=1")[0]}
  for key, argv in commands.items():
    (tmp_path / f"cmd_{key}").write_text(_remote(argv))
  driver = """
    r() { bash -c "$(cat ~/cmd_$1)" > ~/out_$2 2>&1; echo $? > ~/rc_$2; }
    up() { for _ in $(seq 100); do [ -f ~/$1 ] && break; sleep 0.1; done; }
    r alive 1; r train 2; up argv.json; cp ~/argv.json ~/argv1.json
    r alive 3; r precompute 4; r stop 5; r alive 6
    rm ~/argv.json; r deaf 7; up argv.json; r stop1 8; r alive 9
    r precompute 10; up teacher_up; r alive 11; r stop 12
  """
  subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "--kill-child",
                  "bash", "-c", driver], env=_env(HOME=str(tmp_path)), timeout=60, check=True)
  out = {i: (tmp_path / f"out_{i}").read_text() for i in range(1, 13)}
  rc = {i: int((tmp_path / f"rc_{i}").read_text()) for i in range(1, 13)}
  host = subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip()
  assert out[1].strip() == out[6].strip() == out[9].strip() == f"idle:{host}", out
  assert out[3].strip() == f"ALIVE:{host} deit_jax.main", out[3]
  assert rc[2] == 0 and "train pid" in out[2], out[2]
  assert json.loads((tmp_path / "argv1.json").read_text()) == {
      "argv": ["--config=configs/deit_base.py", "--workdir=gs://b/deit-jax/deit_base",
               "--multihost", "--config.model.name=x", SPACED],
      "data": "gs://b/tensorflow_datasets"}
  assert rc[4] == 1 and "already running" in out[4]  # the per-worker guard
  assert rc[5] == 0 and f"stopped on {host}" in out[5] and (tmp_path / "sigterm").exists()
  assert "SIGKILL" not in out[5]
  # deaf to SIGTERM: killed after --stop-timeout, saying so in one line
  assert rc[8] == 0 and out[8].count("SIGKILL sent") == 1, out[8]
  assert "still running after 1 s on" in out[8]
  assert (tmp_path / "teacher_up").read_text().startswith(
      "precompute --config=configs/regnety_160_teacher.py --checkpoint=gs://b/models/")
  assert out[11].strip() == f"ALIVE:{host} deit_jax.teacher", out[11]
  assert rc[12] == 0 and f"stopped on {host}" in out[12]
  logs = repo / "logs"
  assert "fake trainer up" in (logs / f"train_{host}.log").read_text()
  assert (logs / f"precompute_{host}.log").read_text().count("precompute") >= 1


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs ssh-keygen")
@pytest.mark.parametrize("passphrase", ["", "secret"])
def test_a_key_with_a_passphrase_and_no_agent_gets_one_hint(tmp_path, passphrase):
  """--worker=all runs one ssh per worker at once: a passphrase nobody's agent holds would be
  asked for by each; the script says so once, before the first of them."""
  key = tmp_path / ".ssh" / "google_compute_engine"
  key.parent.mkdir()
  subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-f", str(key)],
                 check=True, timeout=30)
  env, _ = _fake_gcloud(tmp_path, HOME=str(tmp_path))
  env.pop("SSH_AUTH_SOCK", None)
  p = _run(TPU, "train", *BASE, "--bucket=b", env=env)
  hints = [line for line in p.stderr.splitlines() if "ssh-add" in line]
  if passphrase:
    assert len(hints) == 1 and "has a passphrase and no ssh agent holds it" in hints[0]
    assert f"ssh-add {key}" in hints[0]
  else:
    assert hints == []


def _fake_python(tmp_path):
  path = tmp_path / "python"
  path.write_text(f"#!{sys.executable}\nimport json, sys\n"
                  f"print(json.dumps(sys.argv[1:]))\n")
  path.chmod(0o755)
  return str(path)


def test_gpu_slurm_srun_command(tmp_path):
  python = _fake_python(tmp_path)
  env = _env(SLURM_JOB_ID="7", SLURM_JOB_NUM_NODES="4", PYTHON=python,
             SLURM_JOB_NODELIST="gpu[03-06,9],login1", SLURM_JOB_CPUS_PER_NODE="64(x3),32")
  out = _run(GPU, "--dry-run", "--port=2222", "--config=c.py", "--workdir=/w", SPACED,
             env=env).stdout
  argv = shlex.split(out)
  # One task per node with every CPU of the smallest node, not pinned to one core.
  assert argv[:7] == ["srun", "--nodes=4", "--ntasks=4", "--ntasks-per-node=1",
                      "--cpus-per-task=32", "--cpu-bind=none", "--kill-on-bad-exit=1"]
  # What each task runs, with its own SLURM_PROCID.
  task = subprocess.run(argv[7:], env=_env(SLURM_PROCID="3"), capture_output=True,
                        text=True, check=True).stdout
  assert json.loads(task) == ["-m", "deit_jax.main", "--process_id=3",
                              "--coordinator_address=gpu03:2222", "--num_processes=4",
                              "--config=c.py", "--workdir=/w", SPACED]


def test_gpu_plain_hosts(tmp_path):
  env = _env(PYTHON=_fake_python(tmp_path))
  args = ["--coordinator", "host0:1234", "--num-processes=2", "--process-id=1", "--",
          "--config=c.py", SPACED]
  expected = ["-m", "deit_jax.main", "--coordinator_address=host0:1234",
              "--num_processes=2", "--process_id=1", "--config=c.py", SPACED]
  assert json.loads(_run(GPU, *args, env=env).stdout) == expected
  assert shlex.split(_run(GPU, "--dry-run", *args, env=env).stdout)[1:] == expected


@pytest.mark.parametrize("args, env, message", [
    (["--config=c"], {}, "not in a SLURM job"),
    (["--coordinator=h:1", "--config=c"], {}, "need all of --coordinator"),
    (["--coordinator=h", "--num-processes=2", "--process-id=0", "--config=c"], {}, "HOST:PORT"),
    (["--coordinator=h:1", "--num-processes=2", "--process-id=2", "--config=c"], {}, "0..1"),
    ([], {}, "no deit_jax.main flags"),
    (["--config=c"], {"SLURM_JOB_ID": "1"}, "SLURM_JOB_NUM_NODES"),
])
def test_gpu_bad_input_is_a_one_line_error(args, env, message):
  p = _run(GPU, "--dry-run", *args, env=_env(**env), check=False)
  assert p.returncode == 2 and p.stdout == ""
  assert len(p.stderr.splitlines()) == 1 and p.stderr.startswith("gpu_multinode.sh: error: ")
  assert message in p.stderr, p.stderr


def test_shellcheck_clean():
  if shutil.which("shellcheck") is None:
    if os.environ.get("CI", "").lower() == "true":
      pytest.fail("shellcheck missing in CI: launch/setup.sh installs it with the test extra")
    pytest.skip("shellcheck not installed (apt-get install shellcheck)")
  # SC2317 (info): shellcheck 0.9 calls functions that only a `trap` invokes unreachable.
  scripts = sorted(str(p) for p in (ROOT / "launch").glob("*.sh"))
  p = subprocess.run(["shellcheck", "-e", "SC2317", *scripts], capture_output=True, text=True,
                     timeout=120)
  assert p.returncode == 0, p.stdout


def test_reproduction_report_from_results(tmp_path):
  """launch/reproduce_fashion_mnist.py --report_only: mean +- half-range over seeds per
  variant, the teacher row, and the PNG where matplotlib is installed."""
  results = tmp_path / "results"
  results.mkdir()
  def put(name, top1, cls=None, dist=None, agreement=80.0):
    value = dict(top1=top1, top1_cls=cls or top1, top1_dist=dist or top1, agreement=agreement)
    (results / f"{name}.json").write_text(json.dumps(value))
  put("teacher_cnn", 93.1)
  put("none_s0", 80.0, agreement=84.0)
  put("none_s1", 81.0, agreement=86.0)
  put("hard_s0", 82.0, cls=81.5, dist=82.5)
  put("hard_s1", 83.0, cls=82.5, dist=83.5)
  run = tmp_path / "none_s0"
  run.mkdir()
  (run / "metrics.jsonl").write_text("".join(
      json.dumps({"step": s, "loss_base": 2.0 / s}) + "\n" for s in (50, 100, 150)))
  figure = tmp_path / "docs" / "fm.png"
  out = subprocess.run([sys.executable, str(ROOT / "launch" / "reproduce_fashion_mnist.py"),
                        f"--workdir={tmp_path}", "--report_only", f"--figure={figure}"],
                       capture_output=True, text=True, cwd=ROOT, check=True).stdout
  table = (tmp_path / "table.md").read_text()
  assert table in out.replace("\r", "") or table.strip() in out
  assert "| CNN teacher (cifar_resnet20) | 1 | 93.10 |" in table
  assert "| none | 2 | 80.50 +- 0.50 |  |  | 85.00 +- 1.00 |" in table
  assert "| hard | 2 | 82.50 +- 0.50 | 82.00 +- 0.50 | 83.00 +- 0.50 | 80.00 +- 0.00 |" in table
  assert table.index("| none |") < table.index("| hard |")
  try:
    import matplotlib  # noqa: F401  # pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    assert "no matplotlib" in out
  else:
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "fashion_mnist.png").exists()


def test_reproduction_bad_inputs_are_one_line_errors(tmp_path):
  """--teacher_from without a teacher and an unwritable --figure: one line, no traceback."""
  script = str(ROOT / "launch" / "reproduce_fashion_mnist.py")
  p = subprocess.run([sys.executable, script, f"--workdir={tmp_path / 'w'}", "--steps=10",
                      f"--teacher_from={tmp_path / 'none'}"], capture_output=True, text=True)
  assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
  assert p.stderr.strip() == (f"error: --teacher_from={tmp_path / 'none'} has no "
                              f"{tmp_path / 'none' / 'teacher_cnn'}: run the script with "
                              f"--workdir={tmp_path / 'none'} first")
  (tmp_path / "w" / "budget.json").write_text(json.dumps({"steps": 10}))
  p = subprocess.run([sys.executable, script, f"--workdir={tmp_path / 'w'}", "--steps=20"],
                     capture_output=True, text=True)
  assert p.returncode == 1 and p.stderr.strip() == (
      f"error: {tmp_path / 'w'} holds runs with --steps=10, not 20: use another --workdir")
  (tmp_path / "results").mkdir()
  (tmp_path / "results" / "none_s0.json").write_text(json.dumps(
      dict(top1=80.0, top1_cls=80.0, top1_dist=80.0, agreement=80.0)))
  (tmp_path / "blocker").write_text("a file, not a folder")
  p = subprocess.run([sys.executable, script, f"--workdir={tmp_path}", "--report_only",
                      f"--figure={tmp_path / 'blocker' / 'fm.png'}"],
                     capture_output=True, text=True)
  try:
    import matplotlib  # noqa: F401  # pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    assert p.returncode == 0 and "no matplotlib" in p.stdout
    return
  assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
  assert p.stderr.startswith(f"error: cannot write --figure={tmp_path / 'blocker' / 'fm.png'}:")
  assert len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_setup_skips_pip_only_when_nothing_changed(tmp_path):
  """launch/setup.sh re-run: pip is skipped when the pins, extras and installed versions are
  those of its last install, and runs again when one of them changed (a fake environment
  whose python records what it is asked)."""
  venv = tmp_path / "venv"
  site = venv / "lib" / "python3.12" / "site-packages"
  site.mkdir(parents=True)
  (site / "jax-0.1.dist-info").mkdir()
  calls = tmp_path / "calls"
  (venv / "bin").mkdir()
  (venv / "bin" / "python").write_text(
      f'#!/bin/sh\necho "$*" >> {calls}\n[ "$1" = --version ] && echo "Python 3.12.0"\nexit 0\n')
  (venv / "bin" / "python").chmod(0o755)
  env = _env(DEIT_JAX_VENV=str(venv), DEIT_JAX_LIST_DEVICES="0", PYTHON=sys.executable)

  said = []

  def pip_runs(extras=""):
    calls.write_text("")
    said.append(_run(ROOT / "launch" / "setup.sh", *([extras] if extras else []),
                     env=env).stdout)
    return sum(line.startswith("-m pip") for line in calls.read_text().splitlines())

  if not pathlib.Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").exists():
    pytest.skip("Debian's dataset-fashion-mnist is not installed (setup.sh would install it)")
  assert pip_runs() == 2  # pip itself, then the package
  assert ("[setup] installing deit_jax pinned by launch/constraints.txt (first run: a few "
          "minutes)") in said[-1]
  assert pip_runs() == 0
  assert "[setup] deit_jax already installed as pinned (nothing changed since)" in said[-1]
  assert pip_runs("tpu") == 2  # other extras
  assert pip_runs("tpu") == 0
  (site / "jax-0.1.dist-info").rename(site / "jax-0.2.dist-info")  # changed by hand
  assert pip_runs("tpu") == 2
  (venv / ".deit_jax_setup").write_text("an interrupted install\n")
  assert pip_runs("tpu") == 2
  env["DEIT_JAX_CONSTRAINTS"] = ""  # unpinned: always asks pip
  assert pip_runs("tpu") == 2 and pip_runs("tpu") == 2
