"""``wanport.Pipeline``: load once, generate many.

    from wanport import Pipeline

    with Pipeline.from_recipe("recipes/wan2.1-t2v-14b.yaml") as pipe:
        result = pipe.generate(prompt="A red panda on a skateboard", seed=1)
        result.save("out/panda.mp4")

``from_recipe`` runs every check of ``wanport run`` (the recipe, the input image, the backend,
every checkpoint file -- all problems at once, the same error types, whose ``exit_code`` is the
command line's), starts the backend's runtime (and, under torchrun, the process group, which lives
until :meth:`Pipeline.close`), resolves the op table and loads the models. ``generate`` takes the
per-call values (:data:`wanport.pipeline.request.PER_CALL`), checks them with the same code
before any compute, and reuses everything loaded; a key that needs a reload raises
:class:`~wanport.errors.ReloadRequired`. ``wanport run`` is this class with one call
(``resident=False``: the text and image encoders are released after encoding, as a one-video
process wants).
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import os
import time
from typing import Any, Dict, Mapping, Optional, Sequence, Union

import torch

from ..config import RunConfig, apply_overrides, build_config, read_yaml
from ..config.loader import set_path
from ..config.schema import TINY_RECIPE
from ..errors import ConfigError
from ..schedulers import make_scheduler
from . import sampling
from .callbacks import CallObserver, OnStep
from .common import (
    Call,
    Prepared,
    base_report,
    check_request,
    count_nonfinite,
    encode_prompts,
    parallel_summary,
    pipeline_plan,
    prepare,
    vae_decode,
)
from .request import PER_CALL, call_recipe
from .resident import ResidentModels
from .result import GenerateResult
from .timing import StageClock

RecipeLike = Union[str, "os.PathLike[str]", Mapping[str, Any], None]


def generator_for(prep: Prepared, models: ResidentModels):
    """The family's generator, by the model's task."""
    task = prep.plan.preset.task
    if task == "i2v":
        from .i2v import I2VGenerator as cls
    elif task == "ti2v":
        from .ti2v import TI2VGenerator as cls
    else:
        from .t2v import T2VGenerator as cls
    return cls(prep, models)


def recipe_dict(recipe: RecipeLike, values: Mapping[str, Any], overrides: Sequence[str]):
    """(raw recipe dict, source) from a path, a mapping or None (the embedded tiny recipe), with
    keyword values (per-call names such as ``steps`` or recipe keys; sections as dicts, merged)
    and dotted ``overrides`` applied."""
    if recipe is None:
        raw, source = copy.deepcopy(TINY_RECIPE), "the embedded tiny recipe"
    elif isinstance(recipe, Mapping):
        raw, source = copy.deepcopy(dict(recipe)), "recipe (dict)"
    else:
        path = os.fspath(recipe)
        raw, source = read_yaml(path), "recipe %s" % path
    for key, value in values.items():
        set_path(raw, PER_CALL.get(key, key), value, merge=True)
    return apply_overrides(raw, list(overrides)), source


class Pipeline:
    """A recipe's models, loaded once; :meth:`generate` makes one video per call."""

    def __init__(self, prep: Prepared, raw: Mapping[str, Any], source: str, models: ResidentModels, generator,
                 progress: bool = True, observer=None, load_s: float = 0.0, owns_process_group: bool = False) -> None:
        self._prep = prep
        self._raw = copy.deepcopy(dict(raw))
        self._source = source
        self._models = models
        self._generator = generator
        self._progress = progress
        self._observer = observer
        self._owns_pg = owns_process_group
        self.load_s = load_s
        self.calls = 0
        #: the report of the last call, on every rank (the main rank's result holds the same)
        self.last_report: Optional[Dict[str, Any]] = None
        self._closed = False

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_recipe(cls, recipe: RecipeLike = None, *, overrides: Sequence[str] = (), weights=None,
                    registry=None, observer=None, progress: bool = True, resident: bool = True,
                    **values: Any) -> "Pipeline":
        """Check, start and load. ``recipe``: a YAML path, a recipe dict, or None (the embedded
        tiny recipe). ``values``: recipe keys (``precision="bf16"``, ``parallel={"cfg": 2}``) or
        per-call names (``steps=4``, ``size=(832, 480)``) -- the defaults of every call;
        ``overrides``: dotted strings as on the command line (``["sample.steps=4"]``).
        ``weights``: a weight source (:mod:`wanport.pipeline.weights`; default the checkpoint);
        ``observer``: a :class:`~wanport.pipeline.sampling.LoopObserver` of every call;
        ``resident=False``: load on first use and release the text/image encoders after each
        encode (one-video processes)."""
        for key in values:
            if key in ("image", "size") and values[key] is not None:
                from .request import normalize

                values = dict(values, **{key: normalize(key, values[key])})
        raw, source = recipe_dict(recipe, values, overrides)
        cfg = build_config(raw, source)
        return cls.from_config(cfg, raw, source=source, weights=weights, registry=registry, observer=observer,
                               progress=progress, resident=resident)

    @classmethod
    def from_config(cls, cfg: RunConfig, raw: Mapping[str, Any], *, source: str = "recipe", weights=None,
                    registry=None, observer=None, progress: bool = True, resident: bool = True) -> "Pipeline":
        """As :meth:`from_recipe`, from an already built config and its raw dict."""
        import torch.distributed as dist

        owns = not (dist.is_available() and dist.is_initialized())
        prep = None
        try:
            prep = prepare(cfg, registry, source, weights, resident=resident)
            models = ResidentModels(prep, resident)
            generator = generator_for(prep, models)
            models.uses_clip = generator.uses_clip
            load_s = 0.0
            if resident:
                clock = StageClock(prep.runtime)
                with torch.no_grad():
                    models.load_all(clock)
                load_s = round(clock.stages.get("load", 0.0), 4)
        except BaseException:
            if owns:
                _teardown()
            raise
        return cls(prep, raw, source, models, generator, progress=progress, observer=observer, load_s=load_s,
                   owns_process_group=owns and prep.mesh is not None)

    # ------------------------------------------------------------------ properties
    @property
    def model(self) -> str:
        return self._prep.plan.preset.name

    @property
    def task(self) -> str:
        return self._prep.plan.preset.task

    @property
    def device(self) -> torch.device:
        return self._prep.device

    @property
    def is_main(self) -> bool:
        """False on the ranks other than 0 of a multi-process pipeline (their generate returns None)."""
        return self._prep.is_main

    @property
    def recipe(self) -> Dict[str, Any]:
        """The recipe the pipeline was built from (a copy)."""
        return copy.deepcopy(self._raw)

    @property
    def ops(self) -> Dict[str, str]:
        """The implementation chosen for every call site of the recipe's op table."""
        return dict(self._prep.ops.describe())

    def __repr__(self) -> str:
        return "Pipeline(%s on %s, %d call(s)%s)" % (self.model, self._prep.spec.name, self.calls,
                                                      ", closed" if self._closed else "")

    # ------------------------------------------------------------------ generate
    def generate(self, prompt: Optional[str] = None, negative_prompt: Optional[str] = None, image=None,
                 seed: Optional[int] = None, steps: Optional[int] = None, guide_scale=None,
                 shift: Optional[float] = None, size=None, frames: Optional[int] = None, *,
                 progress: Optional[bool] = None, output: Union[None, bool, str, "os.PathLike[str]"] = None,
                 on_step: Optional[OnStep] = None, observer=None, video_tensor: bool = False,
                 lora_strength: Optional[Mapping[str, float]] = None, **more: Any) -> Optional[GenerateResult]:
        """One video. Arguments left None take the recipe's value; ``image=""`` drops the
        recipe's image (TI2V text mode). More per-call keys by name: ``solver``, ``timesteps``,
        ``boundary``, ``noise``, ``fps``. ``output``: a path (``dir/name.mp4``) to write the mp4
        and its JSON report to, True for the recipe's ``output:`` section, None to write nothing
        (``result.save(path)`` later). ``on_step(step, total, latent_stats)`` after every step.
        ``lora_strength``: ``{name: strength}`` for LoRAs loaded unmerged (``merge: false``; names as
        in the report's ``lora`` rows), for this call only (the recipe's strengths come back after).
        Returns a :class:`GenerateResult` on the main rank, None on the others."""
        called_at = time.perf_counter()
        if self._closed:
            raise ConfigError("generate(): the pipeline is closed; build a new one")
        values = {"prompt": prompt, "negative_prompt": negative_prompt, "image": image, "seed": seed,
                  "steps": steps, "guide_scale": guide_scale, "shift": shift, "size": size, "frames": frames}
        values.update(more)
        source = "generate()"
        cfg, raw = call_recipe(self._raw, values, None if output is True or output is None else output, source)
        plan, image_in, size_wh = check_request(cfg, source)
        if output is not None and output is not False:
            from ..io.video import require_encoder

            require_encoder(source)
        prep = self._prep
        plan = pipeline_plan(prep, plan)
        call = Call(datetime.datetime.now(datetime.timezone.utc), cfg, raw, plan, image_in, size_wh,
                    make_scheduler(plan.solver, steps=plan.steps, shift=plan.shift,
                                   timesteps=list(plan.timesteps) if plan.timesteps else None,
                                   denoising_step_list=plan.denoising_step_list),
                    StageClock(prep.runtime), prep.ops_for(plan),
                    observer if observer is not None else self._observer)
        show = (self._progress if progress is None else progress) and prep.is_main
        strengths = self._check_lora_strength(lora_strength)
        prep.runtime.reset_peak_memory()
        with torch.no_grad(), self._lora_strengths(strengths):
            result = self._generate(call, called_at, show, on_step, write=output is not None and output is not False,
                                    video_tensor=video_tensor)
        return result

    def _check_lora_strength(self, strengths: Optional[Mapping[str, float]]) -> Dict[str, float]:
        """The call's unmerged-LoRA strengths, checked before any compute."""
        if not strengths:
            return {}
        import math

        from ..lora.side_path import lora_strengths

        known: Dict[str, float] = {}
        for model in self._models.dit_models():
            known.update(lora_strengths(model))
        if not isinstance(strengths, Mapping):
            raise ConfigError("generate(lora_strength=...): give a mapping {name: strength}, got %s"
                              % type(strengths).__name__)
        out = {}
        for name, value in strengths.items():
            if name not in known:
                raise ConfigError("generate(lora_strength=...): %r is not a LoRA loaded unmerged here (unmerged: %s); "
                                  "a merged LoRA's strength is fixed when the weights load (merge: false keeps it "
                                  "changeable)" % (name, ", ".join(sorted(known)) or "none"))
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError("generate(lora_strength=...): %r must be a finite number, got %r" % (name, value))
            out[name] = float(value)
        return out

    @contextlib.contextmanager
    def _lora_strengths(self, strengths: Mapping[str, float]):
        """The call's strengths on every DiT that carries those LoRAs, the previous ones after."""
        if not strengths:
            yield
            return
        from ..lora.side_path import lora_strengths, set_lora_strengths

        saved = []
        for model in self._models.dit_models():
            mine = {k: v for k, v in strengths.items() if k in lora_strengths(model)}
            if mine:
                saved.append((model, {k: lora_strengths(model)[k] for k in mine}))
                set_lora_strengths(model, mine)
        try:
            yield
        finally:
            for model, before in saved:
                set_lora_strengths(model, before)

    def _generate(self, call: Call, called_at: float, progress: bool, on_step, write: bool,
                  video_tensor: bool) -> Optional[GenerateResult]:
        prep, models, plan, clock = self._prep, self._models, call.plan, call.clock
        runtime = prep.runtime
        text_len = prep.ckpts.dit.config.text_len

        text_encoder = models.text_encoder(clock)
        with clock.stage("text_encode"):
            ctx_cond, ctx_uncond = encode_prompts(text_encoder, plan, text_len, prep.device)
        del text_encoder
        models.done_encoding()

        work = self._generator.condition(call, ctx_cond, ctx_uncond)
        models.done_encoding()
        del ctx_cond, ctx_uncond
        watcher = CallObserver(call.observer, on_step, call.scheduler.num_steps, called_at)
        from ..cache.pipeline import attached, cache_report, make_cache

        cache = make_cache(plan, work.experts, call.scheduler, prep.mesh, prep.comm)
        comm_before = prep.comm.snapshot()  # the denoising loop's own communication, for the report
        with clock.stage("denoise"), models.denoising(), attached(cache, models.dit_models()):
            latent, names = sampling.denoise_loop(work.experts, call.scheduler, work.latent, work.cond, work.uncond,
                                                  clock, progress, timestep_fn=work.timestep_fn,
                                                  after_step=work.after_step, observer=watcher,
                                                  cfg_parallel=prep.cfg_parallel, feature_cache=cache)
        comm_denoise = {k: v - comm_before[k] for k, v in prep.comm.snapshot().items()}
        extra = dict(work.report)
        extra["cache"] = cache_report(cache, prep.mesh)  # a collective under torchrun: every rank
        del cache
        if work.finish is not None:
            work.finish(names, extra)
        width, height, frames = work.width, work.height, work.frames
        del work
        models.done_denoising()
        runtime.empty_cache()

        with clock.stage("vae_decode"), models.vae_in_use(clock) as vae:
            video = vae_decode(prep, vae, latent)
        del latent
        summary = parallel_summary(prep, comm_denoise)  # a collective: every rank
        if video is not None:
            watcher.video_decoded(video)
        main = prep.is_main
        nonfinite = count_nonfinite(video)
        if write and main:
            import wanport.io.video as video_io

            with clock.stage("write"):
                video_io.write_mp4(video, plan.video_path, plan.fps)
        report = base_report(prep, call, width, height, frames)
        report.update(extra)
        self.calls += 1
        for row in report.get("lora") or ():
            for model in models.dit_models():
                current = model.__dict__.get("lora_unmerged")
                if current is not None and row.get("name") in current.strengths:
                    row["strength_this_call"] = current.strengths[row["name"]]
        report["pipeline"] = {"call": self.calls, "resident": models.resident, "load_s": self.load_s,
                              "time_to_first_step_s": None if watcher.first_step_s is None
                              else round(watcher.first_step_s, 4)}
        if summary is not None:
            report["parallel"] = summary
        if prep.plan.offload is not None and prep.plan.offload.active:
            report["offload"] = models.offload_report()
        report["output"] = {"nonfinite_values": nonfinite}
        if write and main:
            from ..io.atomic import write_json_atomic

            report["output"].update(video=os.path.abspath(plan.video_path), report=os.path.abspath(plan.report_path))
            write_json_atomic(plan.report_path, report)
        self.last_report = report
        if not main:
            return None
        from ..io.video import to_uint8_frames

        host = video.detach().float().cpu()
        del video
        return GenerateResult(to_uint8_frames(host), report, host if video_tensor else None)

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Free the models' device memory and, when the pipeline started it, end the process
        group (every rank must close). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._models.close()
        if self._owns_pg:
            _teardown()

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False


def _teardown() -> None:
    from ..parallel.mesh import shutdown

    shutdown()  # a no-op when no process group is up


def run(cfg: RunConfig, raw: Mapping[str, Any], registry=None, progress: bool = True, source: str = "recipe",
        observer=None, weights=None) -> Dict[str, Any]:
    """``wanport run``: one pipeline, one call writing the recipe's video and report; returns the
    report (on every rank)."""
    from ..io.video import require_encoder

    require_encoder(source)  # before anything loads
    with Pipeline.from_config(cfg, raw, source=source, registry=registry, weights=weights, progress=progress,
                              resident=False) as pipe:
        pipe.generate(output=True, observer=observer)
        return pipe.last_report


__all__ = ["Pipeline", "GenerateResult", "generator_for", "recipe_dict", "run"]
