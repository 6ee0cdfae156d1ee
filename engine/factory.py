"""Build an `Env` from the composed config, so the front end never imports a world or the model itself.

    engine=sim    hydra.utils.instantiate(cfg.world.sim)     the real simulator of the chosen world
    engine=model  hydra.utils.instantiate(cfg.engine)        the neural world model (`_target_` in
                                                             conf/engine/model.yaml; `name` is dropped)

The model's config node may interpolate the root (`device: ${device}`, `attention: ${attention}`);
`device: auto` is resolved here first, so the model receives a concrete device.
Failures become `FactoryError` with a one-line message naming the config field at fault.
"""
from __future__ import annotations

import importlib

from omegaconf import DictConfig, OmegaConf

from engine.env import Env


class FactoryError(RuntimeError):
    """The config does not describe an env that can be built here; the message says which field and why."""


def resolve_device(requested: str, engine: str) -> str:
    """`auto` means the best accelerator torch sees for the model, and "cpu" for the simulator (which
    renders on the CPU), so playing the simulator never pays for importing torch."""
    if requested != "auto":
        return requested
    if engine != "model":
        return "cpu"
    import torch  # only the model needs it

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def _check_target(node: DictConfig, field: str) -> str:
    target = node.get("_target_") if isinstance(node, DictConfig) else None
    if not target:
        raise FactoryError(f"config field '{field}._target_' is missing: nothing to build")
    module, _, name = str(target).rpartition(".")
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise FactoryError(f"{field}._target_={target}: cannot import module {module!r} ({e})") from None
    if not hasattr(mod, name):
        raise FactoryError(f"{field}._target_={target}: module {module!r} has no {name!r}")
    return str(target)


def _instantiate(node: DictConfig, field: str) -> Env:
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    target = _check_target(node, field)
    try:
        env = instantiate(node, _convert_="all")
    except InstantiationException as e:
        cause = e.__cause__ or e
        raise FactoryError(f"{field}: building {target} failed: {str(cause).splitlines()[0]}") from None
    if not isinstance(env, Env):
        raise FactoryError(f"{field}: {target} does not implement engine.env.Env "
                           f"(needs spec, reset, step, info, attention_modes, set_attention)")
    return env


def _cpu_window(cfg: DictConfig, node: DictConfig) -> None:
    """On a CPU the window mode the model starts in holds `cpu_window` frames (conf/config.yaml): attention is
    ~80% of a CPU frame and grows with the window, and 12 frames make >= 1 frame a second on 2 cores where 32
    make 0.7 (docs/MODEL.md). Said aloud, since it changes what the model sees; cpu_window=null keeps
    attention.params.window."""
    w = cfg.get("cpu_window")
    att = node.get("attention")
    if w is None or cfg.device != "cpu" or not isinstance(att, DictConfig) or att.get("name") != "window":
        return
    if not isinstance(w, int) or isinstance(w, bool) or w < 1:
        raise FactoryError(f"config field 'cpu_window' is {w!r}; expected a number of frames >= 1, or null")
    params = att.get("params") or OmegaConf.create({})
    if params.get("window") != w:
        print(f"CPU: the window mode holds {w} frames (cpu_window; attention.params.window={params.get('window')} "
              f"on a GPU), for >= 1 frame a second on 2 cores; cpu_window=null keeps the GPU's window", flush=True)
        params.window = w
        att.params = params


def build_env(cfg: DictConfig) -> Env:
    """Return the env the config asks for (`cfg.engine.name` is "sim" or "model")."""
    engine = str(OmegaConf.select(cfg, "engine.name", default="sim"))
    cfg.device = resolve_device(str(cfg.get("device", "auto")), engine)
    if engine == "sim":
        sim = OmegaConf.select(cfg, "world.sim")
        if sim is None:
            raise FactoryError("config field 'world.sim' is missing: this world has no simulator config")
        return _instantiate(sim, "world.sim")
    if engine == "model":
        # Resolve against the root first (${device}, ${attention}...), then drop the group's own `name`.
        node = OmegaConf.create(OmegaConf.to_container(cfg.engine, resolve=True))
        node.pop("name", None)
        _cpu_window(cfg, node)
        try:
            _check_target(node, "engine")
        except FactoryError as e:
            raise FactoryError(f"engine=model: the neural model is not available yet ({e}); "
                               f"play the simulator with engine=sim") from None
        return _instantiate(node, "engine")
    raise FactoryError(f"config field 'engine.name' is {engine!r}; expected 'sim' or 'model'")
