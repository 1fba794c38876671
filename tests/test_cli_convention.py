"""One CLI convention (issue 14, part 4): every command answers --help with its options and an example,
and names an unknown option with the closest valid one in one line, exit 2.

The key=value and argparse commands run in-process through their ``main`` (the console scripts call
exactly that); the Hydra commands run in a fresh interpreter, since their check happens before Hydra
parses the command line.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from bindspace.connect import main as connect_main
from bindspace.convert import main as convert_main
from bindspace.data.cli import main as data_main
from bindspace.embed import main as embed_main
from bindspace.report import main as report_main
from bindspace.search import main as search_main

IN_PROCESS = {
    "bindspace-embed": (embed_main, ["ckpt_path=a", "modality=text", "inputs=x.txt", "out=o", "batchsize=3"],
                        "unknown key 'batchsize' (did you mean 'batch_size'?)"),
    "bindspace-search": (search_main, ["index=a", "qury=b"], "unknown key 'qury' (did you mean 'query'?)"),
    "bindspace-data": (data_main, ["chek", "x.jsonl"], "invalid choice: 'chek' (did you mean 'check'?)"),
    "bindspace-report": (report_main, ["runs", "--basline", "x"], "--basline x (did you mean '--baseline'?)"),
    "bindspace-convert": (convert_main, ["imagebind", "a.pth", "b.ckpt", "--haeds", "image=8"],
                          "--haeds image=8 (did you mean '--heads'?)"),
    "bindspace-connect": (connect_main, ["a=x", "b=y", "shared=image", "fit=synthetic", "out=c.st", "metod=lstsq"],
                          "unknown key 'metod' (did you mean 'method'?)"),
}  # fmt: skip


def exit_code(call) -> int:
    try:
        return int(call() or 0)
    except SystemExit as stop:  # argparse exits itself
        return int(stop.code or 0)


@pytest.mark.parametrize("prog", list(IN_PROCESS))
def test_help_shows_options_and_an_example(prog, capsys):
    main = IN_PROCESS[prog][0]
    assert exit_code(lambda: main(["--help"])) == 0
    out = capsys.readouterr().out
    assert prog in out and "example" in out.lower()


@pytest.mark.parametrize(
    ("prog", "command"),
    [("bindspace-data", "check"), ("bindspace-data", "shard"), ("bindspace-convert", "imagebind"),
     ("bindspace-convert", "merge"), ("bindspace-convert", "adapters"), ("bindspace-convert", "apply-adapters")],
)  # fmt: skip
def test_sub_command_help_shows_an_example_of_that_command(prog, command, capsys):
    main = IN_PROCESS[prog][0]
    assert exit_code(lambda: main([command, "--help"])) == 0
    out = capsys.readouterr().out
    assert "example" in out.lower() and f"{prog} {command} " in out.split("example")[-1], out


@pytest.mark.parametrize("prog", list(IN_PROCESS))
def test_an_unknown_option_is_one_line_with_the_closest(prog, capsys):
    main, argv, message = IN_PROCESS[prog]
    assert exit_code(lambda: main(argv)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"{prog}: error: ") and message in err[0], err


@pytest.mark.parametrize(
    ("prog", "argv"),
    [("bindspace-embed", ["--hepl"]), ("bindspace-search", ["index=a", "--hepl"]), ("bindspace-connect", ["--hepl"]),
     ("bindspace-data", ["--hepl"]), ("bindspace-data", ["check", "--hepl"]), ("bindspace-report", ["--hepl"]),
     ("bindspace-convert", ["--hepl"]), ("bindspace-convert", ["imagebind", "--hepl"])],
)  # fmt: skip
def test_a_mistyped_help_is_named_as_one(prog, argv, capsys):
    # argparse checks a missing required argument before an unknown option: `bindspace-data --hepl`
    # said only that a command was missing, and a key=value command suggested no valid option.
    main = IN_PROCESS[prog][0]
    assert exit_code(lambda: main(argv)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--hepl" in err[0] and "(did you mean '--help'?)" in err[0], err


def test_argparse_abbreviations_and_negative_values_are_not_unknown_options(capsys):
    from bindspace.cli import OneLineArgumentParser

    parser = OneLineArgumentParser(prog="p")
    parser.add_argument("target")
    parser.add_argument("--baseline")
    parser.add_argument("--delta", type=float)
    with pytest.raises(SystemExit):
        parser.parse_args(["--base", "x", "--delta", "-0.5"])  # the positional is what is missing
    err = capsys.readouterr().err
    assert "required: target" in err and "unrecognized" not in err, err
    args = parser.parse_args(["t", "--base", "x", "--delta", "-0.5"])
    assert (args.target, args.baseline, args.delta) == ("t", "x", -0.5)


@pytest.mark.parametrize("config", ["train", "eval"])
@pytest.mark.parametrize("flag", ["--hepl", "--hepl=3", "-mm"])
def test_an_unknown_flag_of_a_hydra_command_is_one_line(config, flag):
    # Hydra answered with its override lexer's "LexerNoViableAltException: --hepl ^".
    from bindspace.cli import check_hydra_overrides
    from bindspace.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape(f"unknown option '{flag}'")) as err:
        check_hydra_overrides(config, ["seed=1", flag])
    assert "\n" not in str(err.value) and ("did you mean '--help'" in str(err.value)) == flag.startswith("--hepl")
    check_hydra_overrides("train", ["seed=1", "--cfg", "job"])  # Hydra's own flags stay Hydra's


def cli(module: str, *argv: str) -> subprocess.Popen:
    """Start a command in a fresh interpreter; ``.communicate()`` waits for it."""
    return subprocess.Popen(
        [sys.executable, "-m", module, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    try:
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("module", "prog", "bad", "message"),
    [
        ("bindspace.train", "bindspace-train: config error: ", "optim.lrr=1",
         "unknown key 'optim.lrr' (did you mean 'optim.lr'?)"),
        ("bindspace.eval", "bindspace-eval: error: ", "anchor=txt",
         "no anchor config named 'txt' (did you mean 'text'?)"),
    ],
)  # fmt: skip
def test_hydra_commands_help_and_unknown_keys(tmp_path, module, prog, bad, message):
    # Two independent launches, started together: each is mostly one core importing torch and Lightning.
    helping, failing = cli(module, "--help"), cli(module, bad, f"hydra.run.dir={tmp_path / 'run'}")
    helped, proc = finish(helping), finish(failing)
    assert helped.returncode == 0 and "examples:" in helped.stdout and "config groups" in helped.stdout
    assert len(helped.stdout.splitlines()) < 60  # a page of help, not the config dump
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith(prog) and message in lines[0], proc.stderr
    assert not (tmp_path / "run").exists()


def test_sweep_check_jobs_covers_every_value_without_the_product():
    from bindspace.cli import sweep_check_jobs

    jobs = sweep_check_jobs(["seed=0,1,2", "finetune=frozen,lora_r4", "+tags=[a]", "trainer.max_steps=5"])
    assert jobs == [
        ["seed=0", "finetune=frozen", "+tags=[a]", "trainer.max_steps=5"],
        ["seed=1", "finetune=frozen", "+tags=[a]", "trainer.max_steps=5"],
        ["seed=2", "finetune=frozen", "+tags=[a]", "trainer.max_steps=5"],
        ["seed=0", "finetune=lora_r4", "+tags=[a]", "trainer.max_steps=5"],
    ]
    assert sweep_check_jobs(["seed=range(0,2)"]) == [["seed=0"], ["seed=1"]]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-m", "experiment=ablate_finetune", "finetune=frozen,lora_r5", "seed=0,1"],
         "no finetune config named 'lora_r5' (did you mean 'lora_r8'?)"),
        (["--multirun", "seed=0,1", "optim.lrr=1e-3,1e-4"], "unknown key 'optim.lrr' (did you mean 'optim.lr'?)"),
    ],
)  # fmt: skip
def test_a_sweep_value_that_does_not_compose_stops_before_the_first_job(argv, message):
    # The bad value is the sweep's last: Hydra alone would train the jobs before it first.
    from bindspace.cli import check_hydra_overrides
    from bindspace.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        check_hydra_overrides("train", argv)
    assert "leading +" not in str(err.value)  # a typo with a near miss: adding the key would be refused too
    check_hydra_overrides("train", ["-m", "experiment=ablate_finetune", "finetune=frozen,lora_r4", "seed=0,1"])
    check_hydra_overrides("train", ["-m", "anchor=glob(*)", "seed=0,1"])  # glob sweeps are Hydra's to expand


@pytest.mark.parametrize(
    "argv",
    [
        ["optim.lrr=1", "--cfg", "job"],
        ["--cfg=job", "--resolve", "optim.lrr=1"],
        ["-c", "job", "--package", "optim", "optim.lrr=1"],
        ["-p=optim", "-c", "all", "optim.lrr=1"],
    ],
)
def test_printing_the_config_still_checks_the_overrides(argv):
    # `bindspace-train --cfg job` is what --help points to for the whole config; a typo beside it is
    # the same one-line error as without it, not Hydra's several lines and exit 1.
    from bindspace.cli import check_hydra_overrides
    from bindspace.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape("unknown key 'optim.lrr' (did you mean 'optim.lr'?)")):
        check_hydra_overrides("train", argv)
    check_hydra_overrides("train", [a.replace("lrr", "lr") for a in argv])
    check_hydra_overrides("train", ["--config-name", "other", "optim.lrr=1"])  # another config: Hydra's to check


EXISTING = __file__  # a file that exists: only the paths are checked before launch, nothing is read

FAST_ERRORS = {
    "bindspace.train": [
        (["+anchr=text"], "unknown top-level key(s) ['anchr'] (did you mean 'anchor'?)"),
        (["optim.lrr=1"], "unknown key 'optim.lrr' (did you mean 'optim.lr'?)"),
        (["trainer.max_steps=0"], "trainer.max_steps must be an integer >= 1, got 0"),
        (["+trainer.max_step=5"], "trainer: unknown key(s) ['max_step'] (did you mean 'trainer.max_steps'?)"),
        (["model=tinny"], "no model config named 'tinny' (did you mean 'tiny'?)"),
        (["-m", "seed=0,1", "+anchr=x"], "unknown top-level key(s) ['anchr']"),
        (["optim.lr=-1"], "optim.lr must be in (0, inf), got -1"),  # build_run_spec, with the data's graph
        (["modalities.audio.input.clip_sampler=foo"], "modalities.audio.input.clip_sampler must be one of"),
        (["early_stopping={patience:0}"], "early_stopping.patience must be an integer >= 1"),
        (["preemption.signals=[SIGFOO]"], "preemption.signals: unknown signal 'SIGFOO'"),
        (["data=manifest", "data.train=no/such.jsonl"], "data.train=no/such.jsonl: no such file or folder"),
        (["ckpt_path=no/such.ckpt"], "ckpt_path: no checkpoint file at no/such.ckpt"),
        # Every job of a sweep, before the first starts: job 0 (val=V) trained in full, then job 1 stopped.
        (
            [
                "-m",
                "data=manifest",
                f"data.train={EXISTING}",
                f"data.val={EXISTING},no/val.jsonl",
                "graph.modalities=[image,text]",
            ],
            "data.val=no/val.jsonl: no such file or folder",
        ),
    ],
    "bindspace.eval": [
        (["eval.splitt=val"], "unknown key 'eval.splitt' (did you mean 'eval.split'?)"),
        (["ckpt_path=x.ckpt", "+eval.splitt=val"], "eval: unknown key"),
        (["ckpt_path=x.ckpt", "probe=maybe"], "probe must be true or false, got 'maybe'"),
        ([], "ckpt_path is required"),
        (["ckpt_path=no/such.ckpt"], "ckpt_path: no checkpoint file at no/such.ckpt"),
    ],
}


@pytest.mark.parametrize("module", sorted(FAST_ERRORS))
def test_config_errors_are_answered_before_lightning_and_the_encoders_are_imported(module):
    """bindspace-train and bindspace-eval check the command line with the config checks alone: a typo costs
    torch's import, not Lightning's and timm's as well (docs/benchmarks.md (h)). Every kind of config
    error, in one fresh interpreter: a Hydra composition error, a key added with +, a value of each
    section (the modalities' checked with the graph the data gives), a group option, a sweep, a data path."""
    cases = FAST_ERRORS[module]
    prog = "bindspace-train: config error: " if module == "bindspace.train" else "bindspace-eval: error: "
    code = "\n".join(
        [
            "import sys",
            f"from {module} import main",
            f"for argv in {[argv for argv, _ in cases]!r}:",
            f"    sys.argv = [{prog.split(':')[0]!r}, *argv]",
            "    try:",
            "        main()",
            "    except SystemExit as stop:",
            "        print('exit', stop.code, flush=True)",
            "heavy = ('lightning', 'timm', 'torchvision', 'transformers', 'wandb')",
            "print('imported', sorted(m for m in heavy if m in sys.modules))",
        ]
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.stdout.splitlines() == [*(["exit 2"] * len(cases)), "imported []"], proc.stdout + proc.stderr
    errors = proc.stderr.splitlines()
    assert len(errors) == len(cases), proc.stderr
    for line, (_, message) in zip(errors, cases, strict=True):
        assert line.startswith(prog) and message in line, line


def test_the_trainer_keys_read_from_lightnings_source_are_its_signature():
    """``trainer.*`` is checked against lightning.Trainer's arguments read from its source (no import); they
    must be exactly what the imported class takes."""
    import inspect

    import lightning as L

    from bindspace.config import trainer_arguments

    assert trainer_arguments() == frozenset(inspect.signature(L.Trainer.__init__).parameters) - {"self"}


def test_values_are_checked_as_the_run_sees_them_with_interpolations_resolved():
    """The checks before launch see what the run will: ``trainer.max_steps=${seed}`` is 5, not the string
    '${seed}' (refusing it would refuse a run that trains), and ``${seed}`` at 0 is refused as 0."""
    from bindspace.cli import check_hydra_overrides
    from bindspace.errors import ConfigError
    from bindspace.train import check_composed_config
    from bindspace.training.fit import compose_config

    check_hydra_overrides("train", ["seed=5", "trainer.max_steps=${seed}"], check_composed_config)
    assert compose_config(["seed=5", "trainer.max_steps=${seed}"])["trainer"]["max_steps"] == "${seed}"  # as given
    for check in (
        lambda: check_hydra_overrides("train", ["seed=0", "trainer.max_steps=${seed}"], check_composed_config),
        lambda: compose_config(["seed=0", "trainer.max_steps=${seed}"]),
    ):
        with pytest.raises(ConfigError, match=re.escape("trainer.max_steps must be an integer >= 1, got 0")):
            check()


@pytest.mark.parametrize("module", ["bindspace.train", "bindspace.eval"])
def test_help_is_hydras_text_without_hydras_cost(module):
    """``--help`` is answered by bindspace.cli.hydra_help (the groups listed from one copy of the config
    store) with exactly the text Hydra's own --help prints (a deep copy of the store per group: 5-9 s here),
    and falls back to Hydra for a template placeholder it does not fill."""
    code = "\n".join(
        [
            "import contextlib, io, sys",
            "from bindspace.cli import hydra_help",
            f"from {module} import hydra_main",
            "ours = hydra_help({config!r}, ['--help'])",
            "sys.argv = ['prog', '--help']",
            "hydras = io.StringIO()",
            "with contextlib.redirect_stdout(hydras), contextlib.suppress(SystemExit):",
            "    hydra_main()",
            "assert ours is not None and ours + '\\n' == hydras.getvalue(), (ours, hydras.getvalue())",
            "assert hydra_help({config!r}, ['--help', '--cfg', 'job']) is None",  # another flag: Hydra's
            "assert hydra_help({config!r}, ['--help', 'hydra.help.template=$FLAGS_HELP']) is None",
            "print('same')",
        ]
    ).format(config="train" if module == "bindspace.train" else "eval")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "same", proc.stdout + proc.stderr[-3000:]
