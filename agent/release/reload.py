"""Config reload: apply a changed sys.config to a running node, the way release_handler
applies a new release's configuration during an upgrade.

Steps: preflight (the current release and where its sys.config is), read_config (parse it
on the node, with the config files it includes; a file that does not parse stops here with
its name, line and reason), diff (per loaded application: the .app defaults, overridden by
the config, overridden by ``-App Key Value`` arguments, against the running environment),
then apply: ``application_controller:prep_config_change/0``, set and unset the keys, and
``application_controller:config_change/1``, which calls each application's
``config_change/3``. A callback that fails gets the old environment back (and is told so by a
second config_change), so the node ends either fully on the new config or on the old one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bridge import Atom, BadRpc, format_term

from . import config_line
from .core import Steps, consult_error, node_dirs
from .present import TermStyle
from .releases import parse_which_releases
from .values import (
    DRY_RUN,
    FAILED,
    FAILED_UNCHANGED,
    ROLLED_BACK,
    SUCCEEDED,
    Caller,
    ConfigChange,
    Failure,
    Result,
    term_text,
)

_OK = Atom("ok")
_ERROR = Atom("error")
_PERSISTENT = [(Atom("persistent"), True)]

Env = list[tuple[Any, Any]]           # one application's environment: [{Key, Value}]
Config = list[tuple[Atom, Env]]       # a sys.config: [{Application, Env}]


@dataclass(frozen=True)
class ReloadOptions:
    dry_run: bool = False
    show_values: bool = False   # values may be secrets: only keys unless asked


@dataclass(frozen=True)
class _AppDiff:
    app: Atom
    old: Env
    changed: Env      # new values of keys in both
    added: Env
    removed: list[Any]


def same_term(a: Any, b: Any) -> bool:
    """Erlang's exact equality (=:=) on decoded terms: 1 and 1.0, or true and 1, differ."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same_term(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return len(a) == len(b) and all(
            any(same_term(ka, kb) and same_term(va, vb) for kb, vb in b.items())
            for ka, va in a.items())
    return bool(a == b)


def _find(env: Env, key: Any) -> int:
    return next((i for i, (k, _) in enumerate(env) if same_term(k, key)), -1)


def merge_app_env(base: Env, over: Env) -> Env:
    """``over``'s keys replace ``base``'s (application_controller's merge_app_env)."""
    merged = list(base)
    for key, value in over:
        i = _find(merged, key)
        if i >= 0:
            merged[i] = (key, value)
        else:
            merged.append((key, value))
    return merged


def merge_config(base: Config, over: Config) -> Config:
    merged = list(base)
    for app, env in over:
        i = next((i for i, (a, _) in enumerate(merged) if a == app), -1)
        if i >= 0:
            merged[i] = (app, merge_app_env(merged[i][1], env))
        else:
            merged.append((app, list(env)))
    return merged


def diff_env(old: Env, new: Env) -> tuple[Env, Env, list[Any]]:
    """(changed, added, removed) going from ``old`` to ``new``, as config_change/3 gets them."""
    changed: Env = []
    added: Env = []
    for key, value in new:
        i = _find(old, key)
        if i < 0:
            added.append((key, value))
        elif not same_term(old[i][1], value):
            changed.append((key, value))
    removed = [key for key, _ in old if _find(new, key) < 0]
    return changed, added, removed


def _as_env(value: Any, where: str) -> Env:
    if not isinstance(value, list) or not all(isinstance(kv, tuple) and len(kv) == 2
                                              for kv in value):
        raise Failure(FAILED_UNCHANGED, f"{where} is not a list of {{Key, Value}}; fix it and "
                                        "run relctl reload-config again")
    return [(k, v) for k, v in value]


class ConfigReload:
    def __init__(self, node: Caller, steps: Steps, *, rpc_timeout: float) -> None:
        self._node = node
        self._steps = steps
        self._rpc_timeout = rpc_timeout
        self._style = TermStyle(node)

    async def _call(self, module: str, function: str, args: Sequence[Any] = ()) -> Any:
        return await self._node.call(module, function, args, timeout=self._rpc_timeout)

    async def run(self, options: ReloadOptions) -> Result:
        version = ""
        self._steps.follow("reload")
        try:
            async with self._steps.step("preflight") as st:
                releases = parse_which_releases(
                    await self._call("release_handler", "which_releases"))
                current = next((r for r in releases if r.status == "current"), None) or next(
                    (r for r in releases if r.running), None)
                if current is None:
                    raise Failure(FAILED_UNCHANGED, f"{self._node.name} runs no release known to "
                                                    "release_handler; nothing to reload")
                version = current.version
                dirs = await node_dirs(self._node, self._rpc_timeout)
                path = os.path.join(dirs.releases, version, "sys.config")
                st.detail = f"{current.name} {version}: {path}"
            async with self._steps.step("read_config") as st:
                config, files = await self._read(path)
                config, providers = await self._run_providers(config)
                st.detail = f"read {', '.join(files)}" + (
                    f"; then the release's config providers: {', '.join(providers)}"
                    if providers else "")
            async with self._steps.step("diff") as st:
                diffs, ignored = await self._diff(config)
                changes = await _changes(diffs, options.show_values, self._style)
                st.detail = _diff_text(changes, ignored)
            if options.dry_run:
                self._steps.skip("apply", "dry run: nothing applied")
                return Result(DRY_RUN, version, version, releases=releases,
                              config_changes=changes)
            if not changes:
                self._steps.skip("apply", "the running configuration already matches")
                return Result(SUCCEEDED, version, version, releases=releases)
            async with self._steps.step("apply") as st:
                st.detail = await self._apply(diffs)
            return Result(SUCCEEDED, version, version, releases=releases, config_changes=changes)
        except Failure as failure:
            return Result(failure.outcome, version, version, error=failure.message)

    async def converge(self, path: str) -> tuple[tuple[ConfigChange, ...], str]:
        """The upgrade's runtime_config step (runtime.py): make the running environment what
        a boot with the sys.config at ``path`` gives (its includes, then the release's config
        providers), applied with config_change semantics. The changes (keys only) and what
        was done; a Failure says what could not be."""
        config, _files = await self._read(path)
        config, providers = await self._run_providers(config)
        diffs, ignored = await self._diff(config)
        changes = await _changes(diffs, False, self._style)
        text = _diff_text(changes, ignored)
        if providers:
            text = f"config providers {', '.join(providers)} ran: {text}"
        if diffs:
            text += f"; {await self._apply(diffs)}"
        return changes, text

    # --- read ---------------------------------------------------------------------------

    async def _consult(self, path: str, what: str) -> list[Any]:
        res = await self._call("file", "consult", [path])
        if isinstance(res, tuple) and len(res) == 2 and res[0] == _OK:
            return list(res[1]) if isinstance(res[1], list) else [res[1]]
        reason = res[1] if isinstance(res, tuple) and len(res) == 2 else res
        words = await consult_error(self._node, reason, self._rpc_timeout)
        raise Failure(FAILED_UNCHANGED, f"{what} {path}: {words}; nothing was applied. Fix the "
                                        "file and run relctl reload-config again")

    async def _read(self, path: str, *, included: bool = False) -> tuple[Config, list[str]]:
        """The merged config of ``path`` and the files it names, as the node boots with it
        (only sys.config itself may name files)."""
        terms = await self._consult(path, "cannot read the included config file" if included
                                    else "cannot read")
        if len(terms) != 1 or not isinstance(terms[0], list):
            raise Failure(FAILED_UNCHANGED, f"{path} must hold one list of {{Application, "
                                            "[{Key, Value}]}} ending with a dot; nothing was "
                                            "applied")
        config: Config = []
        files = [path]
        for i, entry in enumerate(terms[0]):
            if isinstance(entry, str) and not included:
                more, named = await self._read(await self._include(entry, os.path.dirname(path)),
                                               included=True)
                files += named
                config = merge_config(config, more)
            elif isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], Atom):
                config = merge_config(config, [(entry[0], _as_env(
                    entry[1], f"the {entry[0].name} entry of {path}"))])
            else:
                allowed = ("not {Application, [{Key, Value}]}" if included else
                           "neither {Application, [{Key, Value}]} nor a file name")
                raise Failure(FAILED_UNCHANGED, f"entry {i + 1} of {path} is {allowed}: "
                                                f"{term_text(entry)}; nothing was applied")
        return config, files

    async def _include(self, name: str, sys_dir: str) -> str:
        # As the node resolves it at boot: ".config" implied, relative to sys.config's
        # directory if the file is there, else to the node's working directory.
        base = name[:-len(".config")] if name.endswith(".config") else name
        file = base + ".config"
        if not os.path.isabs(file):
            beside = os.path.join(sys_dir, file)
            if await self._call("filelib", "is_regular", [beside]):
                return beside
        return file

    async def _run_providers(self, config: Config) -> tuple[Config, list[str]]:
        """A mix release with runtime config (config/runtime.exs) names config providers in
        its sys.config, with the state mix got from their init/1 at build time; the node ran
        them at boot, so run them again, on the node, in order: ``Mod:load(Config, State)``."""
        elixir = next((env for app, env in config if app == Atom("elixir")), [])
        i = _find(elixir, Atom("config_provider_init"))
        init = elixir[i][1] if i >= 0 else None
        if not isinstance(init, dict):
            return config, []
        providers = init.get(Atom("providers"), [])
        names = []
        for entry in providers if isinstance(providers, list) else []:
            if not (isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], Atom)):
                continue
            module, state = entry
            name = module.name.removeprefix("Elixir.")
            names.append(name)
            try:
                loaded = await self._call(module.name, "load", [config, state])
            except BadRpc as exc:
                # The exception goes last: on an Elixir node it ends with its stack lines.
                text = await self._exception_text(exc.reason)
                where = await self._provider_line(module, state, text)
                raise Failure(FAILED_UNCHANGED, f"the config provider {name} failed{where}, "
                                                "nothing was applied (fix the runtime config "
                                                "and run relctl reload-config again): "
                                                f"{text}") from None
            config = [(app, _as_env(env, f"{app} from {name}"))
                      for app, env in _as_env(loaded, f"the config {name} returned")]
        extra = init.get(Atom("extra_config"), [])
        if isinstance(extra, list) and extra:
            config = merge_config(config, [(a, _as_env(e, "extra_config")) for a, e in extra])
        return config, names

    async def _provider_line(self, module: Atom, state: Any, text: str) -> str:
        """" at FILE:LINE" of the runtime.exs expression that raised, when the exception's
        own text does not name its file's line already (as Elixir 1.15+ and syntax errors
        do); "" when it cannot be told."""
        if module != Atom(config_line.READER):
            return ""
        where = await config_line.locate(self._call, state)
        if where is None or where in text:
            return ""
        return f" at {where}"

    async def _exception_text(self, reason: Any) -> str:
        """The provider's exception as Elixir prints it (``** (SyntaxError) ...`` with its
        stack); if the node cannot say it runs Elixir, the exception's own message, else the
        term."""
        if await self._style.elixir():
            return await self._style.reason(reason)
        exc = reason[1][0] if (isinstance(reason, tuple) and len(reason) == 2
                               and isinstance(reason[1], tuple) and reason[1]) else reason
        if isinstance(exc, dict) and exc.get(Atom("__exception__")) is True:
            try:
                message = await self._call("Elixir.Exception", "message", [exc])
                if isinstance(message, bytes):
                    return message.decode("utf-8", "replace")
            except BadRpc:
                pass
        return term_text(reason)

    # --- diff ---------------------------------------------------------------------------

    async def _diff(self, config: Config) -> tuple[list[_AppDiff], list[str]]:
        loaded = await self._call("application", "loaded_applications")
        apps = [entry[0] for entry in loaded if isinstance(entry, tuple) and entry
                and isinstance(entry[0], Atom)]
        ignored = sorted(a.name for a, _ in config if a not in apps)
        configured = await self._configured()
        diffs = []
        for app in apps:
            new = merge_app_env(await self._app_defaults(app),
                                next((env for a, env in config if a == app), []))
            new = merge_app_env(new, await self._command_line_env(app))
            old = _as_env(await self._call("application", "get_all_env", [app]),
                          f"the environment of {app.name}")
            changed, added, removed = diff_env(old, new)
            if all(a != app for a, _ in config):
                # No section for it in the config: what it has beyond its defaults was set at
                # run time (Elixir's Logger sets kernel's logger), not by a config: keep it.
                removed = []
            elif configured is not None:
                # Keys OTP or the runtime set at boot (kernel's logger, connect_all) that no
                # config ever named are not the config's to remove.
                named = next((env for a, env in configured if a == app), [])
                removed = [key for key in removed if _find(named, key) >= 0]
            if changed or added or removed:
                diffs.append(_AppDiff(app, old, changed, added, removed))
        return diffs, ignored

    async def _configured(self) -> Config | None:
        """The configuration the application controller holds (its conf_data): what the node
        booted with (or release_handler installed since), plus every persistent set_env since,
        a reload's own included. None when its state is not the record OTP 25-27 keep."""
        state = await self._call("sys", "get_state", [Atom("application_controller")])
        conf = state[-1] if (isinstance(state, tuple) and state
                             and state[0] == Atom("state")) else None
        if not isinstance(conf, list):
            return None
        return [(entry[0], [kv for kv in entry[1] if isinstance(kv, tuple) and len(kv) == 2])
                for entry in conf if isinstance(entry, tuple) and len(entry) == 2
                and isinstance(entry[0], Atom) and isinstance(entry[1], list)]

    async def _app_defaults(self, app: Atom) -> Env:
        """The env of the application's .app file: the values it falls back to."""
        lib = await self._call("code", "lib_dir", [app])
        if not isinstance(lib, str):
            return []
        path = os.path.join(lib, "ebin", f"{app.name}.app")
        res = await self._call("file", "consult", [path])
        if not (isinstance(res, tuple) and len(res) == 2 and res[0] == _OK):
            return []
        for spec in res[1]:
            if isinstance(spec, tuple) and len(spec) == 3 and isinstance(spec[2], list):
                for prop in spec[2]:
                    if isinstance(prop, tuple) and len(prop) == 2 and prop[0] == Atom("env"):
                        return _as_env(prop[1], f"the env of {path}")
        return []

    async def _command_line_env(self, app: Atom) -> Env:
        """``-App Key Value`` arguments: they override the config at boot, so they still do."""
        res = await self._call("init", "get_argument", [app])
        if not (isinstance(res, tuple) and len(res) == 2 and res[0] == _OK):
            return []
        env: Env = []
        for args in res[1]:
            for key, value in zip(args[0::2], args[1::2]):
                env.append((await self._parse(key), await self._parse(value)))
        return env

    async def _parse(self, text: str) -> Any:
        scanned = await self._call("erl_scan", "string", [text])
        if isinstance(scanned, tuple) and scanned[0] == _OK:
            parsed = await self._call("erl_parse", "parse_term",
                                      [[*scanned[1], (Atom("dot"), 1)]])
            if isinstance(parsed, tuple) and parsed[0] == _OK:
                return parsed[1]
        # The node kept it as it could not parse it either: compare it the same way.
        return text

    # --- apply --------------------------------------------------------------------------

    async def _set(self, diffs: list[_AppDiff], *, forward: bool) -> None:
        for d in diffs:
            if forward:
                put, drop = d.changed + d.added, d.removed
            else:
                put = [(k, v) for k, v in d.old
                       if _find(d.changed, k) >= 0 or any(same_term(k, r) for r in d.removed)]
                drop = [k for k, _ in d.added]
            if put:
                await self._call("application", "set_env", [[(d.app, put)], _PERSISTENT])
            for key in drop:
                await self._call("application", "unset_env", [d.app, key, _PERSISTENT])

    async def _apply(self, diffs: list[_AppDiff]) -> str:
        before = await self._call("application_controller", "prep_config_change")
        await self._set(diffs, forward=True)
        res = _refusals(await self._call("application_controller", "config_change", [before]))
        if res == _OK:
            return f"config_change/3 called for {', '.join(d.app.name for d in diffs)}"
        refused = await self._style.reason(_why(res))
        # Put the old environment back and tell the applications, so none keeps a config
        # another one refused.
        now = await self._call("application_controller", "prep_config_change")
        await self._set(diffs, forward=False)
        back = _refusals(await self._call("application_controller", "config_change", [now]))
        if back == _OK:
            raise Failure(ROLLED_BACK, f"config_change/3 refused the new config: {refused}; the "
                                       "previous environment is back. Fix the config (or the "
                                       "callback) and reload again")
        raise Failure(FAILED, f"config_change/3 refused the new config: {refused}; restoring the "
                              f"previous environment was refused too: "
                              f"{await self._style.reason(_why(back))}. The "
                              "environment is the previous one; check the applications")


def _why(refusal: Any) -> Any:
    """The reason of config_change/1's {error, Reason}: both refusals are worded alike."""
    return refusal[1] if isinstance(refusal, tuple) and len(refusal) == 2 else refusal


def _refusals(res: Any) -> Any:
    """config_change/1's answer without {module_not_defined, App}: an application without a
    callback module (a library) has nothing to refuse with."""
    if isinstance(res, tuple) and len(res) == 2 and res[0] == _ERROR and isinstance(res[1], list):
        left = [e for e in res[1] if not (isinstance(e, tuple) and len(e) == 2
                                          and e[0] == Atom("module_not_defined"))]
        return (_ERROR, left) if left else _OK
    return res


_NO_VALUE = object()  # a side of a change that has no value to show


async def _changes(diffs: list[_AppDiff], show_values: bool,
                   style: TermStyle) -> tuple[ConfigChange, ...]:
    """The changes as reported. Keys are names, in Erlang form; values (only when asked: they
    may be secrets) in the node's language, "GBP" on an Elixir node, all worded at once."""
    rows: list[tuple[str, Any, str, Any, Any]] = []   # app, key, kind, old, new
    for d in diffs:
        def old_value(key: Any, d: _AppDiff = d) -> Any:
            i = _find(d.old, key)
            return d.old[i][1] if i >= 0 else _NO_VALUE
        rows += [(d.app.name, key, "changed", old_value(key), value) for key, value in d.changed]
        rows += [(d.app.name, key, "added", _NO_VALUE, value) for key, value in d.added]
        rows += [(d.app.name, key, "removed", old_value(key), _NO_VALUE) for key in d.removed]
    shown = [v for row in rows for v in row[3:] if v is not _NO_VALUE] if show_values else []
    texts = iter(await style.values(shown) if shown else [])

    def text(value: Any) -> str:
        return "" if value is _NO_VALUE or not show_values else next(texts)
    return tuple(ConfigChange(app, format_term(key), kind, text(old), text(new))
                 for app, key, kind, old, new in rows)


def _diff_text(changes: tuple[ConfigChange, ...], ignored: list[str]) -> str:
    if not changes:
        text = "no changes"
    else:
        counts = {k: sum(c.kind == k for c in changes) for k in ("added", "changed", "removed")}
        text = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
        text += ": " + ", ".join(f"{c.application}.{c.key}" for c in changes)
    if ignored:
        text += f"; ignored (not loaded on the node): {', '.join(ignored)}"
    return text
