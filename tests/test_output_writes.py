"""Outputs are proven writable before the work, written atomically, checked after writing, and
never half-written (disk full, encoder failure, SIGTERM/Ctrl-C); reports are strict JSON; recipe
values are finite and command-line text is taken verbatim; the remaining "traceback where a
message belongs" cases and run.sh's argument handling."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from wanport import cli
from wanport.config import TINY_RECIPE
from wanport.config.loader import apply_overrides, build_config, text_paths
from wanport.errors import EXIT_CODES, ConfigError, OutputError, ResourceError

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
GOOD = b"the previous good video"


def _run_cli(capsys, argv):
    code = cli.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def _video(frames=5, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(3, frames, size, size, generator=g) * 2 - 1


def _script(tmp_path, body: str) -> str:
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(body))
    return str(path)


# ------------------------------------------------------------------------------------------
# the mp4: encode errors detected, previous file kept, temp files removed


def test_write_mp4_round_trip_leaves_only_the_video(tmp_path):
    from wanport.io.video import read_mp4, write_mp4

    path = str(tmp_path / "v.mp4")
    write_mp4(_video(), path, fps=16)
    assert os.listdir(tmp_path) == ["v.mp4"]
    frames = read_mp4(path)
    assert frames.shape == (5, 32, 32, 3)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_ffmpeg_failure_is_an_error_not_success():
    """ffmpeg writing to /dev/full gets a real ENOSPC: its non-zero exit must be an OutputError
    that carries ffmpeg's reason (imageio's writer ignored the exit status)."""
    from wanport.io.video import encode

    with pytest.raises(OutputError, match="No space left on device"):
        encode(np.zeros((3, 32, 32, 3), np.uint8), "/dev/full", fps=16, label="out/x.mp4")


def test_disk_full_keeps_the_previous_file_and_leaves_no_temp(tmp_path):
    """A file-size limit (RLIMIT_FSIZE) makes every write past 4 kB fail, as a full disk does:
    the mp4 and the JSON report both fail with exit 7, the previous files stay byte for byte,
    and no temporary file is left."""
    (tmp_path / "v.mp4").write_bytes(GOOD)
    (tmp_path / "r.json").write_bytes(GOOD)
    script = _script(tmp_path, """
        import resource, signal, sys, torch
        from wanport.errors import OutputError
        from wanport.io.atomic import write_json_atomic
        from wanport.io.video import write_mp4
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        failed = []
        try:
            write_mp4(torch.rand(3, 9, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1,
                      sys.argv[1] + "/v.mp4", 16)
        except OutputError as e:
            failed.append("video: " + str(e))
        try:
            write_json_atomic(sys.argv[1] + "/r.json", {"x": "y" * 10000})
        except OutputError as e:
            failed.append("report: " + str(e))
        print("\\n".join(failed))
        sys.exit(7 if len(failed) == 2 else 0)
    """)
    proc = subprocess.run([sys.executable, script, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 7, proc.stdout + proc.stderr
    assert "writing the video %s/v.mp4 failed" % tmp_path in proc.stdout
    assert "cannot write %s/r.json: File too large" % tmp_path in proc.stdout
    assert (tmp_path / "v.mp4").read_bytes() == GOOD and (tmp_path / "r.json").read_bytes() == GOOD
    assert sorted(os.listdir(tmp_path)) == ["r.json", "script.py", "v.mp4"]


def test_run_exits_nonzero_when_the_written_mp4_is_unreadable(tmp_path, tiny_ckpt, capsys, monkeypatch):
    """An encoder that 'succeeds' but leaves a truncated file (what imageio let through) is caught
    by reading the file back: exit 7, no 'wrote', the previous video untouched, no report."""
    import wanport.io.video as video

    def truncated_encode(frames, path, fps, quality=8, label=""):
        with open(path, "wb") as f:
            f.write(b"\x00\x00\x00\x18ftypisom" + b"\x00" * 64)  # an mp4 header and nothing else

    monkeypatch.setattr(video, "encode", truncated_encode)
    out = tmp_path / "out"
    out.mkdir()
    (out / "tiny-t2v.mp4").write_bytes(GOOD)
    code, stdout, err = _run_cli(capsys, ["run", "--no-progress", "checkpoint_dir=%s" % tiny_ckpt,
                                          "output.dir=%s" % out, "sample.steps=1", "sample.frame_num=1",
                                          "sample.size=32*32"])
    assert code == 7, err
    assert err.startswith("wanport: error: writing the video") and "cannot be read back" in err
    assert "Traceback" not in err and "wrote" not in stdout
    assert (out / "tiny-t2v.mp4").read_bytes() == GOOD
    assert os.listdir(out) == ["tiny-t2v.mp4"]


def test_a_missing_encoder_is_a_config_error_before_the_work(tmp_path, tiny_ckpt, capsys, monkeypatch):
    """Without imageio-ffmpeg (an environment installed with --no-deps) run and check stop with one
    message naming the package before the pipeline is built, and Pipeline.generate(output=...)
    before it denoises -- not with a ModuleNotFoundError after the denoising."""
    import importlib.util

    import wanport.pipeline.api as api

    real = importlib.util.find_spec
    common = ["checkpoint_dir=%s" % tiny_ckpt, "output.dir=%s" % tmp_path, "sample.size=32*32",
              "sample.frame_num=1", "sample.steps=1"]
    pipe = api.Pipeline.from_recipe(overrides=common, progress=False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "imageio_ffmpeg" else real(name, *a))
    with pipe:
        with pytest.raises(ConfigError, match="pip install imageio-ffmpeg"):
            pipe.generate(output=str(tmp_path / "a.mp4"))
        assert pipe.calls == 0
        assert pipe.generate().frames.shape[0] == 1  # writing nothing needs no encoder
    built = []
    monkeypatch.setattr(api.Pipeline, "from_config", classmethod(lambda cls, *a, **k: built.append(a)))
    for cmd in ("run", "check"):
        code, stdout, err = _run_cli(capsys, [cmd] + (["--no-progress"] if cmd == "run" else []) + common)
        assert code == ConfigError.exit_code == 2, (cmd, err)
        assert "imageio-ffmpeg" in err and "Traceback" not in err and "wrote" not in stdout
    assert built == [] and os.listdir(tmp_path) == []


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, -signal.SIGTERM), (signal.SIGINT, 130)])
def test_signal_during_the_write_leaves_no_temporary_file(tmp_path, sig, code):
    """The encoder is replaced by one that writes half a file and blocks; the signal arrives
    mid-write. SIGTERM still ends the process by SIGTERM, Ctrl-C as an interrupt -- and in both
    cases the temporary file is gone and the previous video is untouched."""
    (tmp_path / "v.mp4").write_bytes(GOOD)
    script = _script(tmp_path, """
        import sys, time, torch
        import wanport.io.video as video
        def blocked(frames, path, fps, quality=8, label=""):
            with open(path, "wb") as f:
                f.write(b"half a video")
            print("WRITING", flush=True)
            time.sleep(60)
        video.encode = blocked
        try:
            video.write_mp4(torch.zeros(3, 1, 16, 16), sys.argv[1] + "/v.mp4", 16)
        except KeyboardInterrupt:
            sys.exit(130)
        sys.exit(0)
    """)
    # as from a terminal: SIGINT at its default (a test runner's worker may ignore it, and an ignored
    # signal stays ignored across exec, so Python would install no KeyboardInterrupt handler)
    proc = subprocess.Popen([sys.executable, script, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert proc.stdout.readline().strip() == "WRITING"
        assert any(n.startswith(".v.mp4.") for n in os.listdir(tmp_path))  # the temporary file exists now
        proc.send_signal(sig)
        assert proc.wait(timeout=60) == code
    finally:
        if proc.poll() is None:
            proc.kill()
    assert sorted(os.listdir(tmp_path)) == ["script.py", "v.mp4"]
    assert (tmp_path / "v.mp4").read_bytes() == GOOD


def test_signal_handlers_are_restored_after_a_write(tmp_path):
    from wanport.io.atomic import write_text_atomic

    before = signal.getsignal(signal.SIGTERM)
    write_text_atomic(str(tmp_path / "a.txt"), "x")
    assert signal.getsignal(signal.SIGTERM) is before


# ------------------------------------------------------------------------------------------
# the output location, proven before the work


def test_output_probe_creates_nothing_in_a_single_process_check(tmp_path, tiny_ckpt, capsys):
    target = tmp_path / "a" / "b"
    code, out, err = _run_cli(capsys, ["check", "checkpoint_dir=%s" % tiny_ckpt, "output.dir=%s" % target])
    assert code == 0, err
    assert not (tmp_path / "a").exists() and os.listdir(tmp_path) == []


def test_name_just_under_the_limit_is_accepted_and_written(tmp_path):
    """A stem whose .json is exactly NAME_MAX bytes passes; the temporary name never exceeds it."""
    from wanport.io.atomic import write_json_atomic
    from wanport.io.location import writable_problems

    limit = os.pathconf(str(tmp_path), "PC_NAME_MAX")
    name = "n" * (limit - len(".json")) + ".json"
    assert writable_problems(str(tmp_path), [name]) == []
    write_json_atomic(str(tmp_path / name), {"ok": True})
    assert os.listdir(tmp_path) == [name]
    assert writable_problems(str(tmp_path), ["n" + name])[0].endswith("choose a shorter output.name)")


@pytest.mark.parametrize("argv", [
    ["compare", "{tmp}/no-dump-a", "{tmp}/no-dump-b", "--out", "/proc/wanport/cmp"],
    ["bench", "merge", "{tmp}/missing.json", "--out", "/proc/wanport/merged"],
    ["dump", "--out", "/proc/wanport-dump"],
])
def test_unwritable_out_fails_before_the_work(argv, tmp_path, capsys):
    """--out is proven writable first: exit 7 (not the missing-dump/missing-file error, not a
    traceback after the work)."""
    code, _, err = _run_cli(capsys, [a.format(tmp=tmp_path) for a in argv])
    assert code == 7, err
    assert err.startswith("wanport: error: --out: cannot create") and "Traceback" not in err


# ------------------------------------------------------------------------------------------
# strict JSON


def _strict_loads(text: str):
    def refuse(name):
        raise ValueError("non-JSON constant %s" % name)

    return json.loads(text, parse_constant=refuse)


def test_reports_are_strict_json(tmp_path):
    from wanport.io.atomic import finite_or_none, write_json_atomic

    path = str(tmp_path / "r.json")
    write_json_atomic(path, {"a": 1.5, "stats": {"mean": float("nan"), "max": [1.0, float("inf")]},
                             "ok": finite_or_none(float("-inf"))})
    data = _strict_loads(open(path).read())
    assert data["stats"] == {"mean": None, "max": [1.0, None]} and data["ok"] is None and data["a"] == 1.5
    assert data["non_finite_as_null"] == ["$.stats.mean", "$.stats.max[1]"]


def test_bench_ops_rows_flag_non_finite_errors(monkeypatch):
    """An implementation whose output holds NaN gets no error figure (null) and a flag."""
    from wanport.bench import ops

    real = ops.measure_ceilings
    monkeypatch.setattr(ops, "_rel", lambda a, b: float("nan"))
    monkeypatch.setattr(ops, "measure_ceilings",  # small: a 1024^2 bf16 matmul takes seconds without native bf16
                        lambda device, runtime, quick: real(device, runtime, quick, n=64, copy_elements=1 << 12))
    result = ops.bench_ops(backend="reference", models=["wan2.1-t2v-1.3b"], sizes=["480p"], kinds=["rms_norm"],
                           warmup=0, repeats=1, quick=True)
    rows = [r for r in result["rows"] if "median_ms" in r]
    assert rows and all(r["rel_err_vs_f64"] is None and r["nonfinite_output"] for r in rows)
    from wanport.io.atomic import json_text

    assert "non_finite_as_null" not in _strict_loads(json_text(result))
    assert "non-finite output" in ops.markdown(result)


# ------------------------------------------------------------------------------------------
# non-finite numbers: one gate for every float field of the schema


def _leaf_kinds():
    from wanport.config.loader import _kinds

    return {p: k for p, k in _kinds().items() if k != "section"}


def _type_problems(path: str, text: str):
    from wanport.errors import ConfigError

    raw = apply_overrides(json.loads(json.dumps(TINY_RECIPE)), ["%s=%s" % (path, text)])
    try:
        build_config(raw)
    except ConfigError as exc:
        return [line for line in str(exc).splitlines() if path in line]
    return []


def test_every_float_field_rejects_nan_and_inf():
    """Every field that takes a number (today: shift, boundary, guide_scale and its pair) refuses
    NaN and infinities; a new float field is covered by this walk without being named here."""
    numeric = []
    for path in _leaf_kinds():
        if path in text_paths():
            continue
        for good, bads in (("1.5", (".nan", ".inf", "-.inf", "1.0e+400")),
                           ("[1.5, 2.5]", ("[1.5, .nan]", "[.inf, 2.5]"))):
            if _type_problems(path, good):
                continue  # this field does not take that shape of number
            numeric.append(path)
            for bad in bads:
                problems = _type_problems(path, bad)
                assert problems and "must be a finite number" in problems[0], (path, bad, problems)
    assert {"sample.shift", "sample.boundary", "sample.guide_scale"} <= set(numeric)


# ------------------------------------------------------------------------------------------
# command-line values: text verbatim, the rest YAML


@pytest.mark.parametrize("text", ["a cat #1 in the world", "a cat: running fast", "'quoted' \"too\"", "yes",
                                  "007", "[not, a, list]", "{not: a map}", "  spaced  ", "x=y"])
def test_text_fields_take_the_override_verbatim(text):
    raw = apply_overrides(json.loads(json.dumps(TINY_RECIPE)), ["prompt=" + text, "output.name=" + text])
    cfg = build_config(raw)
    assert cfg.prompt == text and cfg.output.name == text


def test_other_fields_read_yaml_and_empty_unsets_optional_text():
    raw = apply_overrides(json.loads(json.dumps(TINY_RECIPE)),
                          ["sample.steps=4", "sample.guide_scale=2.5", "compile=true", "image=", "output.name="])
    cfg = build_config(raw)
    assert cfg.sample.steps == 4 and cfg.sample.guide_scale == 2.5 and cfg.compile is True
    from wanport.config.validate import plan_run

    plan = plan_run(cfg)
    assert plan.image_path is None and os.path.basename(plan.video_path) == "wan2.1-t2v-tiny_t2v_seed42.mp4"


def test_one_entry_of_a_mapping_field_by_dotted_path():
    raw = dict(json.loads(json.dumps(TINY_RECIPE)), precision="official")
    raw = apply_overrides(raw, ["ops.attention=reference.sdpa", "precision.vae=bf16", "env.WANPORT_X=a: b"])
    assert raw["ops"]["attention"] == "reference.sdpa"
    assert raw["precision"] == {"preset": "official", "vae": "bf16"}  # the preset string kept as the preset
    assert raw["env"]["WANPORT_X"] == "a: b"  # env entries are text, verbatim
    cfg = build_config(raw)
    assert cfg.ops["attention"] == "reference.sdpa"
    with pytest.raises(ConfigError, match="unknown key 'sample.foo'"):
        apply_overrides(raw, ["sample.foo=1"])  # a section is not a mapping field


def test_help_documents_the_override_rule():
    text = cli.build_parser()._subparsers._group_actions[0].choices["run"].format_help()
    flat = " ".join(text.split())
    for path in text_paths():
        assert path in flat, path
    assert "verbatim" in flat and "YAML" in flat
    readme = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    for path in text_paths():
        assert "`%s`" % path in readme.split("### Overrides", 1)[1].split("\n## ", 1)[0], path


# ------------------------------------------------------------------------------------------
# messages instead of tracebacks


def test_recipe_not_utf8(tmp_path, capsys):
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("model: wan2.1-t2v-tiny\nprompt: caf\xe9\n".encode("latin-1"))
    code, _, err = _run_cli(capsys, ["check", str(bad)])
    assert code == 2 and "is not UTF-8 text (byte 0xe9 on line 2)" in err and "Traceback" not in err


def test_out_of_memory_says_what_the_recipe_needs(tmp_path, capsys, monkeypatch):
    """bench pipeline on a machine too small: one message (exit 8) with the weights' size under
    the recipe's precision -- computed from the real architecture, not a hard-coded number."""
    import wanport.pipeline.api as api
    from wanport.bench.random_weights import RandomWeights
    from wanport.config.loader import load_recipe
    from wanport.config.validate import plan_run
    from wanport.pipeline.moe import expert_bytes

    oom = getattr(torch, "OutOfMemoryError", MemoryError)

    def no_memory(*a, **k):
        raise oom("Tried to allocate 26.00 GiB (out of memory)")

    monkeypatch.setattr(api.Pipeline, "from_recipe", no_memory)
    # memory_check: false -- the memory plan would refuse this recipe on this host before it runs
    argv = ["bench", "pipeline", os.path.join(REPO, "recipes", "wan2.2-t2v-a14b.yaml"), "--weights", "random",
            "--no-progress", "output.dir=%s" % tmp_path, "memory_check=false"]
    code, _, err = _run_cli(capsys, argv)
    assert code == 8 == ResourceError.exit_code, err
    cfg, _ = load_recipe(argv[2], ["output.dir=%s" % tmp_path, "memory_check=false"])
    plan = plan_run(cfg)
    ckpts = RandomWeights(0).inspect(plan)
    dit = expert_bytes(ckpts.dit.config, plan.policy) / 2 ** 30
    assert "out of memory running wan2.2-t2v-a14b" in err and ("DiT %.1f GiB x 2 experts" % dit) in err
    assert "Traceback" not in err and err.count("wanport: error:") == 1


def test_exit_code_table_matches_the_error_classes():
    from wanport import errors

    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.WanportError)]
    readme = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    for c in classes:
        assert c.exit_code in EXIT_CODES
        assert "| %d |" % c.exit_code in readme, c.__name__
    # one code per kind of failure: a subclass shares its parent's code (ReloadRequired is a
    # ConfigError, PlanError a ResourceError), the kinds themselves all differ
    kinds = [c for c in classes if c.__bases__ == (errors.WanportError,)]
    assert len({c.exit_code for c in kinds}) == len(kinds)
    for c in classes:
        assert c in kinds or c is errors.WanportError or c.exit_code == c.__bases__[0].exit_code, c


# ------------------------------------------------------------------------------------------
# bench ops: a ceiling that is one


def test_matmul_ceiling_is_the_fastest_measured_dtype():
    from wanport.bench import ops
    from wanport.reference.runtime import HostRuntime

    runtime = HostRuntime()
    c = ops.measure_ceilings(torch.device("cpu"), runtime, quick=True, n=128, copy_elements=1 << 16)
    per = [c["%s_matmul_tflops" % name] for name, _ in ops.CEILING_DTYPES]
    assert all(v > 0 for v in per) and c["matmul_tflops"] == max(per)
    result = {"backend": "reference", "device": "cpu", "ceilings": c, "rows": []}
    head = ops.markdown(result).splitlines()[0]
    assert "matmul %.4g TFLOP/s" % c["matmul_tflops"] in head and "matmul 0 TFLOP/s" not in head


# ------------------------------------------------------------------------------------------
# run.sh: options anywhere, paths from where the user stands


@pytest.fixture
def fake_wanport(tmp_path):
    """A `wanport` on PATH that records its working directory and arguments (nproc: prints 1)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "calls.log"
    exe = bindir / "wanport"
    exe.write_text('#!/usr/bin/env bash\n'
                   'printf "%%s|%%s\\n" "$PWD" "$*" >> %s\n'
                   '[ "$1" = nproc ] && echo 1\n'
                   'exit 0\n' % log)
    exe.chmod(0o755)
    env = dict(os.environ, PATH="%s:%s" % (bindir, os.environ["PATH"]))
    return env, log


def _runsh(args, cwd, env, log):
    proc = subprocess.run([os.path.join(REPO, "run.sh")] + args, cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60)
    calls = [line.split("|", 1) for line in log.read_text().splitlines()] if log.exists() else []
    return proc, calls


def test_run_sh_option_before_the_recipe(tmp_path, fake_wanport):
    env, log = fake_wanport
    user = tmp_path / "work"
    user.mkdir()
    (user / "my.yaml").write_text("model: wan2.1-t2v-tiny\n")
    proc, calls = _runsh(["--no-progress", "my.yaml", "checkpoint_dir=ck", "--set", "output.dir=o"], user,
                         env, log)
    assert proc.returncode == 0, proc.stderr
    run = [c for c in calls if c[1].startswith("run ")]
    assert run == [[str(user), "run my.yaml --no-progress checkpoint_dir=ck --set output.dir=o"]]
    nproc = [c for c in calls if c[1].startswith("nproc ")]
    assert nproc == [[str(user), "nproc my.yaml checkpoint_dir=ck output.dir=o"]]


def test_run_sh_default_recipe_from_another_folder(tmp_path, fake_wanport):
    """No recipe: the repository's tiny recipe and checkpoint, wherever the user stands; the
    user's own paths (output.dir) stay relative to the user's folder and come last (they win)."""
    env, log = fake_wanport
    proc, calls = _runsh(["--no-progress", "output.dir=mine"], str(tmp_path), env, log)
    assert proc.returncode == 0, proc.stderr
    run = [c for c in calls if c[1].startswith("run ")][0]
    assert run[0] == str(tmp_path)
    assert run[1] == "run %s/recipes/tiny-t2v.yaml checkpoint_dir=%s/ckpts/tiny-wan2.1-t2v --no-progress " \
                     "output.dir=mine" % (REPO, REPO)
    for cwd, args in calls:
        if args.startswith("make-tiny"):
            assert cwd == REPO  # the tiny checkpoint is written into the repository


def test_run_sh_repo_tiny_recipe_gets_the_repo_image(tmp_path, fake_wanport):
    env, log = fake_wanport
    recipe = os.path.join(REPO, "recipes", "tiny-wan2.2-ti2v-5b.yaml")
    proc, calls = _runsh([recipe, "prompt=a cat #1"], str(tmp_path), env, log)
    assert proc.returncode == 0, proc.stderr
    run = [c for c in calls if c[1].startswith("run ")][0]
    assert run[1] == "run %s checkpoint_dir=%s/ckpts/tiny-wan2.2-ti2v-5b image=%s/assets/i2v_input.png " \
                     "prompt=a cat #1" % (recipe, REPO, REPO)


def test_run_sh_two_recipes_is_an_error(tmp_path, fake_wanport):
    env, log = fake_wanport
    proc, calls = _runsh(["a.yaml", "b.yaml"], str(tmp_path), env, log)
    assert proc.returncode == 2 and "two recipes given" in proc.stderr and not calls


def test_a_video_with_nan_is_flagged_in_the_report(tmp_path, capsys, monkeypatch, tiny_ckpt):
    """NaN from the sampling itself (weights, precision) encodes as black frames: the run says so
    on stderr and in the report instead of passing silently."""
    import wanport.pipeline.api as api
    from wanport.pipeline.common import count_nonfinite

    video = _video()
    video[:, 0] = float("nan")
    assert count_nonfinite(video) == 3 * 32 * 32
    assert "holds %d NaN/Inf values" % (3 * 32 * 32) in capsys.readouterr().err
    assert count_nonfinite(None) == 0 and count_nonfinite(_video()) == 0

    real = api.vae_decode

    def poisoned(prep, vae, latent):
        out = real(prep, vae, latent)
        out[:, 0] = float("nan")
        return out

    monkeypatch.setattr(api, "vae_decode", poisoned)
    pipe = api.Pipeline.from_recipe(None, overrides=["checkpoint_dir=%s" % tiny_ckpt, "sample.steps=1",
                                                     "sample.frame_num=1", "sample.size=64*64"], progress=False)
    with pipe:
        result = pipe.generate()
    assert result.report["output"]["nonfinite_values"] == 3 * 64 * 64
    _strict_loads(json.dumps(result.report, allow_nan=False, default=str))


def test_writers_that_wrap_the_os_error_still_give_one_message(tmp_path, monkeypatch):
    """safetensors reports a full disk as SafetensorError("... (os error 28)"), torch.save as an
    opaque RuntimeError: both become OutputError (the latter when the file system has no space
    left), the temporary file is removed; any other exception passes through unchanged."""
    from wanport.io import atomic

    target = str(tmp_path / "w.safetensors")

    def failing(message):
        with atomic.atomic_path(target) as tmp:
            open(tmp, "wb").write(b"part")
            raise RuntimeError(message)

    with pytest.raises(OutputError, match="No space left on device"):
        failing("Error while serializing: I/O error: No space left on device (os error 28)")
    with pytest.raises(RuntimeError, match="unexpected pos"):
        failing("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
    full = os.statvfs_result((4096, 4096, 100, 0, 0, 100, 0, 0, 0, 255))
    monkeypatch.setattr(atomic.os, "statvfs", lambda d: full)
    with pytest.raises(OutputError, match="No space left on device"):
        failing("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
    assert os.listdir(tmp_path) == []


def test_run_sh_help_writes_nothing(tmp_path, fake_wanport):
    env, log = fake_wanport
    proc, calls = _runsh(["--no-progress", "--help"], str(tmp_path), env, log)
    assert proc.returncode == 0 and calls == [[str(tmp_path), "run --help"]]


def test_run_sh_full_size_repo_recipe_paths_point_into_the_repo(tmp_path, fake_wanport):
    """A repository recipe's relative checkpoint_dir and image resolve in the repository; the
    user's own image= (relative to the user's folder) comes later and wins."""
    env, log = fake_wanport
    recipe = os.path.join(REPO, "recipes", "wan2.1-i2v-14b-480p.yaml")
    proc, calls = _runsh([recipe, "image=me.png"], str(tmp_path), env, log)
    assert proc.returncode == 0, proc.stderr
    run = [c for c in calls if c[1].startswith("run ")][0]
    assert run == [str(tmp_path), "run %s checkpoint_dir=%s/ckpts/Wan2.1-I2V-14B-480P image=%s/assets/i2v_input.png "
                                  "image=me.png" % (recipe, REPO, REPO)]
    assert not any(c[1].startswith("make-tiny") for c in calls)
