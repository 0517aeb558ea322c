"""Runtime config (DESIGN.md section 4, step 5): after install_release, the node's application
environment is what a fresh boot of that release would give.

release_handler applies ``releases/VSN/sys.config`` as it is on disk. Some releases compute
their config at boot instead, and lose it on a hot upgrade unless the agent does it again:

* a **mix release with config providers** (config/runtime.exs): its sys.config names them
  under ``{elixir, [{config_provider_init, #{providers => ...}}]}``; Elixir runs them at boot.
  After the install they run again on the node, and the result is applied with
  config_change semantics by the machinery of ``relctl reload-config`` (reload.py).
* a **relx release with sys.config.src**, or a node started with **RELX_REPLACE_OS_VARS**:
  relx's start script renders ``${VAR}`` and ``${VAR:-default}`` from the OS environment at
  boot and writes ``releases/VSN/sys.config`` (keeping the template as ``sys.config.orig`` in
  the RELX_REPLACE_OS_VARS case). The agent renders the same way with the node's own
  environment (``os:getenv`` on the node) and writes the file before install_release, so that
  release_handler applies, and tells config_change/3, the rendered config.

The preflight makes a :class:`ConfigPlan` per release and refuses, before any change, a config
that cannot be reproduced (an unset variable, config providers of a shape relctl does not
know), unless the operation allows the config reset (``--allow-config-reset``). A plain
release costs no RPC here and shows no step: install_release already does all of it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge import Atom, BadRpc

from .core import EngineCore, OperationContext
from .preflight import Preflight
from .reload import ConfigReload
from .tarballs import ReleaseTarball
from .values import FAILED, FAILED_UNCHANGED, ConfigChange, Failure, Options, term_text

_OK = Atom("ok")
_VAR = re.compile(rb"\$\{([^}]*)\}")  # relx's awk pattern: [$]{[^}]*}
SRC = "sys.config.src"
REPLACE_OS_VARS = "RELX_REPLACE_OS_VARS"
PROVIDERS = "config providers"


@dataclass(frozen=True)
class ConfigPlan:
    """How a fresh boot of ``version`` makes its config, and what the agent does about it."""

    version: str
    source: str = ""                    # SRC, REPLACE_OS_VARS, PROVIDERS; "" for a plain release
    rendered: bytes | None = None       # written to releases/VSN/sys.config before the install
    template: bytes | None = None       # REPLACE_OS_VARS: kept as sys.config.orig, as relx does
    variables: tuple[str, ...] = ()     # the ${VAR} names rendered
    empty: tuple[str, ...] = ()         # unset ones rendered empty (--allow-config-reset)
    providers: tuple[str, ...] = ()
    reset: str = ""                     # why it cannot be reproduced (allowed by the option)

    @property
    def active(self) -> bool:
        return bool(self.source)


def relx_variables(template: bytes) -> list[tuple[str, str | None]]:
    """The ``${VAR}`` / ``${VAR:-default}`` references of a relx template, in order, once
    each: (name, default or None)."""
    seen: dict[str, str | None] = {}
    for match in _VAR.finditer(template):
        name, sep, default = match.group(1).partition(b":-")
        key = name.decode("utf-8", "surrogateescape")
        if key not in seen:
            seen[key] = default.decode("utf-8", "surrogateescape") if sep else None
    return list(seen.items())


def render_relx(template: bytes, env: Mapping[str, str | None]) -> bytes:
    """What relx's start script writes from ``template``: each ``${VAR}`` becomes the variable's
    value ("" when unset), ``${VAR:-default}`` the default when the value is empty or unset.
    ``env`` maps names to values, None for unset."""
    def value(match: re.Match[bytes]) -> bytes:
        name, sep, default = match.group(1).partition(b":-")
        got = env.get(name.decode("utf-8", "surrogateescape")) or ""
        if sep and not got:
            return default
        return got.encode("utf-8", "surrogateescape")
    return _VAR.sub(value, template)


def _read_local(path: Path) -> bytes | None:
    """A file of the node's release root, read on the agent's side (the agent shares the host;
    staging writes there too), so that a plain release costs no RPC."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise Failure(FAILED_UNCHANGED, f"cannot read {path} ({exc.strerror or exc}): the agent "
                                        "needs read access to the node's release root") from None


class RuntimeConfig:
    """The plans of one operation (one engine per operation), the pre-install write and the
    runtime_config step; ``changes`` are the keys the runtime_config steps changed."""

    def __init__(self, core: EngineCore, preflight: Preflight) -> None:
        self._core = core
        self._preflight = preflight
        self._plans: dict[str, ConfigPlan] = {}
        self.changes: tuple[ConfigChange, ...] = ()

    # --- preflight ------------------------------------------------------------------------

    async def check(self, version: str, tarball: ReleaseTarball | None, ctx: OperationContext,
                    options: Options) -> str:
        """The preflight's config check of ``version`` (the tarball's files, or the node's):
        it parses as release_handler will read it, and its runtime config can be reproduced.
        The step detail; a Failure (nothing changed) otherwise."""
        plan = await self.plan(version, tarball, ctx, allow_reset=options.allow_config_reset)
        if plan.rendered is not None:
            # release_handler will read the rendered file: that is what must parse.
            await self._check_parses(plan)
            return self._plan_text(plan)
        text = await self._preflight.check_config(
            version, tarball.sys_config if tarball else None, ctx)
        return f"{text}; {self._plan_text(plan)}" if plan.active else text

    async def plan(self, version: str, tarball: ReleaseTarball | None, ctx: OperationContext,
                   *, allow_reset: bool) -> ConfigPlan:
        assert ctx.dirs is not None
        where = Path(ctx.dirs.releases) / version
        if tarball is not None:
            src, sys_config = tarball.sys_config_src, tarball.sys_config
        else:
            src = _read_local(where / "sys.config.src")
            # relx renders RELX_REPLACE_OS_VARS from sys.config.orig once it made one.
            sys_config = _read_local(where / "sys.config.orig") or _read_local(
                where / "sys.config")
        plan = ConfigPlan(version)
        if src is not None:
            plan = await self._render(version, SRC, src, None, allow_reset)
        elif sys_config is not None and b"${" in sys_config and await self._getenv(
                REPLACE_OS_VARS):
            plan = await self._render(version, REPLACE_OS_VARS, sys_config, sys_config,
                                      allow_reset)
        text = plan.rendered if plan.rendered is not None else sys_config
        if text is not None and b"config_provider_init" in text:
            plan = await self._providers(plan, text, allow_reset)
        self._plans[version] = plan
        return plan

    async def _getenv(self, name: str) -> str | None:
        """The node's own environment variable (None: unset), as its start script saw it."""
        value = await self._core.call("os", "getenv", [name])
        return value if isinstance(value, str) else None

    async def _render(self, version: str, source: str, template: bytes,
                      keep: bytes | None, allow_reset: bool) -> ConfigPlan:
        names = relx_variables(template)
        env = {name: await self._getenv(name) for name, _ in names}
        unset = [name for name, default in names if env[name] is None and default is None]
        file = f"releases/{version}/{'sys.config.src' if source == SRC else 'sys.config'}"
        if unset and not allow_reset:
            how = ("as relx's start script does with " + REPLACE_OS_VARS
                   if source == REPLACE_OS_VARS else "as relx's start script does")
            raise Failure(FAILED_UNCHANGED, f"{file} uses {', '.join('${' + n + '}' for n in unset)}"
                                            f", not set in the environment of "
                                            f"{self._core.node.name}: the install would render "
                                            f"it empty ({how}). Set it in the node's environment "
                                            "(where the node is started, or os:putenv/2 on the "
                                            "running node), or pass --allow-config-reset to "
                                            "render it empty")
        return ConfigPlan(version, source, render_relx(template, env), keep,
                          tuple(n for n, _ in names), tuple(unset))

    async def _providers(self, plan: ConfigPlan, text: bytes, allow_reset: bool) -> ConfigPlan:
        """A mix release's config providers, from the config_provider_init Elixir boots with."""
        terms = await self._parse(text)
        init = None
        for app, env in terms if isinstance(terms, list) else []:
            if app == Atom("elixir") and isinstance(env, list):
                init = next((v for k, v in env if k == Atom("config_provider_init")), None)
        providers = init.get(Atom("providers")) if isinstance(init, dict) else None
        names: list[str] = []
        for entry in providers if isinstance(providers, list) else []:
            if isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], Atom):
                names.append(entry[0].name.removeprefix("Elixir."))
            else:
                providers = None
        if not isinstance(providers, list):
            reason = (f"releases/{plan.version}/sys.config has an Elixir config_provider_init "
                      "that relctl does not know (not a map with a list of {Module, State} "
                      "providers), so the config a boot computes cannot be reproduced")
            if not allow_reset:
                raise Failure(FAILED_UNCHANGED, f"{reason}. Pass --allow-config-reset to "
                                                "install it anyway: the keys its providers set "
                                                "fall back to the build-time config")
            return ConfigPlan(plan.version, PROVIDERS, plan.rendered, plan.template,
                              plan.variables, plan.empty, (), reset=reason)
        return ConfigPlan(plan.version, plan.source or PROVIDERS, plan.rendered, plan.template,
                          plan.variables, plan.empty, tuple(names))

    async def _parse(self, text: bytes) -> Any:
        """The sys.config as a term, parsed on the node as release_handler reads it; None when
        it does not parse (the caller's check says why)."""
        try:
            scanned = await self._core.call("erl_scan", "string",
                                            [text.decode("utf-8", "replace")])
            if isinstance(scanned, tuple) and scanned[0] == _OK:
                parsed = await self._core.call("erl_parse", "parse_term", [scanned[1]])
                if isinstance(parsed, tuple) and parsed[0] == _OK:
                    return parsed[1]
        except BadRpc:
            pass
        return None

    async def _check_parses(self, plan: ConfigPlan) -> None:
        assert plan.rendered is not None
        if not isinstance(await self._parse(plan.rendered), list):
            file = "sys.config.src" if plan.source == SRC else "sys.config"
            raise Failure(FAILED_UNCHANGED, f"releases/{plan.version}/{file} rendered with the "
                                            f"environment of {self._core.node.name} is not an "
                                            "Erlang list ending with a dot, which release_handler "
                                            "would read as an empty config; fix the template "
                                            "(a ${VAR} outside quotes needs a value that is an "
                                            "Erlang term)")

    def _plan_text(self, plan: ConfigPlan) -> str:
        parts = []
        if plan.source in (SRC, REPLACE_OS_VARS):
            what = ("sys.config.src" if plan.source == SRC
                    else f"sys.config ({REPLACE_OS_VARS} is set on the node)")
            parts.append(f"releases/{plan.version}/{what} renders with the node's "
                         f"{', '.join(plan.variables) or 'environment'} and parses")
            if plan.empty:
                parts.append(f"--allow-config-reset: {', '.join(plan.empty)} unset, rendered "
                             "empty")
        if plan.reset:
            parts.append(f"--allow-config-reset: {plan.reset}")
        elif plan.providers:
            parts.append(f"config providers {', '.join(plan.providers)} run again after the "
                         "install")
        return "; ".join(parts)

    # --- around the install ---------------------------------------------------------------

    async def write(self, version: str, ctx: OperationContext, *, outcome: str) -> None:
        """Step write_config, before install_release: releases/VSN/sys.config rendered as
        relx's start script would write it (nothing for other releases)."""
        plan = self._plans.get(version)
        if plan is None or plan.rendered is None:
            return
        assert ctx.dirs is not None
        rel_dir = os.path.join(ctx.dirs.releases, version)
        async with self._core.steps.step("write_config") as st:
            done = []
            orig = os.path.join(rel_dir, "sys.config.orig")
            if plan.template is not None and not await self._core.call("filelib", "is_regular",
                                                                        [orig]):
                await self._write_file(orig, plan.template, outcome)
                done.append(f"kept the template as {orig}")
            path = os.path.join(rel_dir, "sys.config")
            await self._write_file(path, plan.rendered, outcome)
            source = "sys.config.src" if plan.source == SRC else "the template"
            done.insert(0, f"wrote {path} from {source} with the node's "
                           f"{', '.join(plan.variables) or 'environment'}")
            st.detail = "; ".join(done)

    async def _write_file(self, path: str, data: bytes, outcome: str) -> None:
        """Written by the node itself (its user owns the release root, as when relx's start
        script writes it), whole or not at all: a temporary file renamed over the target."""
        tmp = f"{path}.relctl-tmp"
        res = await self._core.call("file", "write_file", [tmp, data])
        if res == _OK:
            res = await self._core.call("file", "rename", [tmp, path])
        if res != _OK:
            await self._core.call("file", "delete", [tmp])
            raise Failure(outcome, f"the node could not write {path}: {term_text(res)}; give "
                                   "the node's user write access to its release root")

    async def apply(self, version: str, ctx: OperationContext, *, outcome: str = FAILED) -> None:
        """Step runtime_config, after install_release: the environment a fresh boot of
        ``version`` gives (config providers run again; the rendered relx config checked)."""
        plan = self._plans.get(version)
        if plan is None or not plan.active:
            return
        if plan.reset and not plan.providers and plan.rendered is None:
            self._core.steps.skip("runtime_config", f"--allow-config-reset: {plan.reset}; "
                                                    "the build-time config of "
                                                    f"releases/{version}/sys.config applies")
            return
        assert ctx.dirs is not None
        path = os.path.join(ctx.dirs.releases, version, "sys.config")
        async with self._core.steps.step("runtime_config") as st:
            reload = ConfigReload(self._core.node, self._core.steps,
                                  rpc_timeout=self._core.rpc_timeout)
            try:
                changes, text = await reload.converge(path)
            except Failure as failure:
                raise Failure(outcome, f"the runtime config of {version} could not be applied: "
                                       f"{failure.message}") from None
            self.changes += changes
            if plan.rendered is not None:
                what = "sys.config.src" if plan.source == SRC else REPLACE_OS_VARS
                text = f"rendered from {what}, applied by install_release; {text}"
            st.detail = text

    async def plan_back(self, version: str, ctx: OperationContext) -> None:
        """The plan of the release a rollback goes back to: never refused (nothing may stop a
        rollback), so unset variables render empty, as relx would."""
        if version not in self._plans:
            try:
                await self.plan(version, None, ctx, allow_reset=True)
            except Failure:
                self._plans[version] = ConfigPlan(version)
