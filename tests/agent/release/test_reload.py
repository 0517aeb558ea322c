"""Config reload (agent/release/reload.py): the term rules it diffs by (Erlang's =:=, the
application controller's merge), and the reload flow against a scripted node
(tests/agent/release/scripted.py): what it reads, the keys it reports, the RPCs that apply
them, and where the node stands when an application's config_change/3 refuses.

The replies are the node's: file:consult's {ok, Terms}, application:get_all_env's
[{Key, Value}], application_controller's state record ending with its conf_data,
config_change/1's ok or {error, Reasons}.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from agent.release import ConfigChange, ConfigReload, ReloadOptions, Result
from agent.release.core import Steps
from agent.release.reload import diff_env, merge_config, same_term
from agent.release.values import DRY_RUN, FAILED, FAILED_UNCHANGED, ROLLED_BACK, SUCCEEDED
from bridge import Atom
from tests.agent.release.scripted import (
    ERROR,
    NODE,
    OK,
    UNDEFINED,
    Expect,
    ScriptedNode,
    StepLog,
    answer,
    which_releases,
)

RPC_TIMEOUT = 1.0
ROOT = "/srv/counter"
SYS_CONFIG = f"{ROOT}/releases/0.0.2/sys.config"
CURRENT = (("0.0.2", "current"), ("0.0.1", "permanent"))
COUNTER, KERNEL = Atom("counter"), Atom("kernel")
GREETING, LIMIT, MODE, OLD_KEY = Atom("greeting"), Atom("limit"), Atom("mode"), Atom("old_key")
PERSISTENT = [(Atom("persistent"), True)]
PREP = [(COUNTER, [(GREETING, "hi")])]  # prep_config_change's answer: opaque, handed back


# --- the term rules ---------------------------------------------------------------------------

@pytest.mark.parametrize(("a", "b", "same"), [
    (1, 1, True),
    (1, 1.0, False),                      # 1 =:= 1.0 is false
    (True, 1, False),                     # true is an atom, not 1
    (Atom("a"), "a", False),              # an atom is not a charlist
    ("abc", "abc", True),
    (b"abc", "abc", False),               # a binary is not a charlist
    ([1, (2, [Atom("x")])], [1, (2, [Atom("x")])], True),
    ([1, (2, [Atom("x")])], [1, (2, [Atom("y")])], False),
    ((1, 2), [1, 2], False),
    ([1, 2], [1, 2, 3], False),
    ({Atom("k"): 1, 2: [3]}, {2: [3], Atom("k"): 1}, True),   # map order does not matter
    ({Atom("k"): 1}, {Atom("k"): 1.0}, False),
    ({1: Atom("v")}, {1.0: Atom("v")}, False),                # nor does a float key match
])
def test_same_term_is_erlangs_exact_equality(a: Any, b: Any, same: bool) -> None:
    assert same_term(a, b) is same
    assert same_term(b, a) is same


def test_merge_config_lets_the_later_config_win_key_by_key() -> None:
    base = [(COUNTER, [(GREETING, "hi"), (LIMIT, 5)]), (KERNEL, [(Atom("logger_level"), Atom("notice"))])]
    over = [(COUNTER, [(LIMIT, 10), (MODE, Atom("fast"))]), (Atom("sasl"), [(Atom("errlog_type"), Atom("error"))])]
    assert merge_config(base, over) == [
        (COUNTER, [(GREETING, "hi"), (LIMIT, 10), (MODE, Atom("fast"))]),  # replaced in place, added after
        (KERNEL, [(Atom("logger_level"), Atom("notice"))]),              # untouched
        (Atom("sasl"), [(Atom("errlog_type"), Atom("error"))]),          # a new application, last
    ]
    assert base[0] == (COUNTER, [(GREETING, "hi"), (LIMIT, 5)])  # the inputs are not changed


def test_merge_config_matches_keys_exactly() -> None:
    # 1 and 1.0 are two keys to Erlang: the later one does not replace the first.
    assert merge_config([(COUNTER, [(1, Atom("int"))])], [(COUNTER, [(1.0, Atom("float"))])]) == [
        (COUNTER, [(1, Atom("int")), (1.0, Atom("float"))])]


def test_diff_env_says_what_changed_was_added_and_was_removed() -> None:
    old = [(GREETING, "hi"), (LIMIT, 5), (OLD_KEY, True), (MODE, 1)]
    new = [(GREETING, "hi"), (LIMIT, 10), (MODE, 1.0), (Atom("added"), [])]
    changed, added, removed = diff_env(old, new)
    assert changed == [(LIMIT, 10), (MODE, 1.0)]  # 1 -> 1.0 is a change (=:=)
    assert added == [(Atom("added"), [])]
    assert removed == [OLD_KEY]
    assert diff_env(old, list(reversed(old))) == ([], [], [])  # order is no change


# --- the flow on a scripted node ---------------------------------------------------------------

class Rig:
    def __init__(self) -> None:
        self.node = ScriptedNode()
        self.log = StepLog()
        self.reload = ConfigReload(self.node, Steps(self.log), rpc_timeout=RPC_TIMEOUT)

    def expect(self, *parts: Expect | list[Expect]) -> None:
        for part in parts:
            self.node.expect(*([part] if isinstance(part, Expect) else part))

    async def run(self, **options: bool) -> Result:
        result = await self.reload.run(ReloadOptions(**options))
        self.node.assert_done()
        assert self.log.balanced()
        return result


@pytest.fixture
def rig() -> Rig:
    return Rig()


def preflight(*entries: tuple[str, str]) -> list[Expect]:
    """The current release, then where its releases dir is (no sasl releases_dir, no RELDIR)."""
    return [which_releases(*(entries or CURRENT)), answer("code:root_dir", [], ROOT),
            answer("application:get_env", [Atom("sasl"), Atom("releases_dir")], UNDEFINED),
            answer("os:getenv", ["RELDIR"], False)]


def sys_config(*entries: Any) -> Expect:
    return answer("file:consult", [SYS_CONFIG], (OK, [list(entries)]))


def app(name: Atom, defaults: list[Any], running: list[Any], args: Any = ERROR,
        parsed: Sequence[Expect] = ()) -> list[Expect]:
    """What the diff asks about one loaded application: its .app's env, its -App Key Value
    arguments (none: error; ``parsed``: their terms read on the node) and its running
    environment."""
    lib = f"{ROOT}/lib/{name.name}-1.0"
    spec = (Atom("application"), name, [(Atom("vsn"), "1.0"), (Atom("env"), defaults)])
    return [answer("code:lib_dir", [name], lib),
            answer("file:consult", [f"{lib}/ebin/{name.name}.app"], (OK, [spec])),
            answer("init:get_argument", [name], args), *parsed,
            answer("application:get_all_env", [name], running)]


def loaded(configured: list[Any], *apps: list[Expect]) -> list[Expect]:
    """The diff: the loaded applications, the controller's conf_data (what the node booted
    with), then each application's env."""
    names = [a[0].args[0] for a in apps]
    state = (Atom("state"), [], [], [], configured)  # #state{..., conf_data}: its last field
    return [answer("application:loaded_applications", [], [(n, "an app", "1.0") for n in names]),
            answer("sys:get_state", [Atom("application_controller")], state),
            *[e for a in apps for e in a]]


BOOTED = [(COUNTER, [(GREETING, "hi"), (OLD_KEY, 1)])]                # the sys.config of the boot
RUNNING = [(GREETING, "hi"), (LIMIT, 5), (OLD_KEY, 1), (Atom("started_at"), 1700)]
DEFAULTS = [(GREETING, "hello"), (LIMIT, 5)]
NEW_CONFIG = (COUNTER, [(GREETING, "hi there"), (LIMIT, 10), (MODE, Atom("fast"))])


def counter_changes() -> list[Expect]:
    """sys.config now sets greeting and limit anew and adds mode, and no longer names old_key
    (booted with it: removed); started_at was set at run time, never by a config: kept. The
    kernel has no section in either: nothing of its env is touched."""
    return [*preflight(), sys_config(NEW_CONFIG),
            *loaded(BOOTED, app(COUNTER, DEFAULTS, RUNNING),
                    app(KERNEL, [], [(Atom("logger_level"), Atom("notice"))]))]


NEW_VALUES = [(GREETING, "hi there"), (LIMIT, 10), (MODE, Atom("fast"))]
CHANGES = (ConfigChange("counter", "greeting", "changed"), ConfigChange("counter", "limit", "changed"),
           ConfigChange("counter", "mode", "added"), ConfigChange("counter", "old_key", "removed"))
DIFF = ("1 added, 2 changed, 1 removed: counter.greeting, counter.limit, counter.mode, "
        "counter.old_key")


def apply_forward(reply: Any = OK) -> list[Expect]:
    return [answer("application_controller:prep_config_change", [], PREP),
            answer("application:set_env", [[(COUNTER, NEW_VALUES)], PERSISTENT], OK),
            answer("application:unset_env", [COUNTER, OLD_KEY, PERSISTENT], OK),
            answer("application_controller:config_change", [PREP], reply)]


def apply_back(reply: Any = OK) -> list[Expect]:
    """The old environment put back: the old values of what changed or went, and what was
    added unset; then the applications are told."""
    now = [(COUNTER, NEW_VALUES)]
    return [answer("application_controller:prep_config_change", [], now),
            answer("application:set_env", [[(COUNTER, [(GREETING, "hi"), (LIMIT, 5), (OLD_KEY, 1)])],
                                            PERSISTENT], OK),
            answer("application:unset_env", [COUNTER, MODE, PERSISTENT], OK),
            answer("application_controller:config_change", [now], reply)]


async def test_a_reload_applies_what_changed_with_config_change(rig: Rig) -> None:
    rig.expect(counter_changes(), apply_forward())
    result = await rig.run()

    assert (result.outcome, result.from_version, result.to_version, result.error) == (
        SUCCEEDED, "0.0.2", "0.0.2", "")
    assert result.config_changes == CHANGES  # keys only: values may be secrets
    assert [(r.version, r.status) for r in result.releases] == list(CURRENT)
    assert rig.log.ended() == [("preflight", "succeeded"), ("read_config", "succeeded"),
                               ("diff", "succeeded"), ("apply", "succeeded")]
    assert rig.log.detail("preflight") == f"counter 0.0.2: {SYS_CONFIG}"
    assert rig.log.detail("read_config") == f"read {SYS_CONFIG}"
    assert rig.log.detail("diff") == DIFF
    assert rig.log.detail("apply") == "config_change/3 called for counter"
    assert all(c.timeout == RPC_TIMEOUT for c in rig.node.calls)


async def test_values_are_shown_only_when_asked(rig: Rig) -> None:
    rig.expect(counter_changes(), apply_forward())
    result = await rig.run(show_values=True)

    assert result.outcome == SUCCEEDED
    assert [(c.key, c.old_value, c.new_value) for c in result.config_changes] == [
        ("greeting", '"hi"', '"hi there"'), ("limit", "5", "10"), ("mode", "", "fast"),
        ("old_key", "1", "")]


async def test_a_dry_run_reports_the_changes_and_applies_nothing(rig: Rig) -> None:
    rig.expect(counter_changes())
    result = await rig.run(dry_run=True)

    assert (result.outcome, result.error) == (DRY_RUN, "")
    assert result.config_changes == CHANGES
    assert rig.log.ended()[-1] == ("apply", "skipped")
    assert rig.log.detail("apply") == "dry run: nothing applied"
    assert not [c for c in rig.node.calls if c.function in ("set_env", "unset_env",
                                                              "prep_config_change")]


async def test_a_config_the_node_already_runs_is_not_applied(rig: Rig) -> None:
    running = [(GREETING, "hi there"), (LIMIT, 10), (MODE, Atom("fast"))]
    rig.expect(preflight(), sys_config(NEW_CONFIG),
               loaded([(COUNTER, running)], app(COUNTER, DEFAULTS, running)))
    result = await rig.run()

    assert (result.outcome, result.config_changes) == (SUCCEEDED, ())
    assert rig.log.detail("diff") == "no changes"
    assert rig.log.ended()[-1] == ("apply", "skipped")
    assert rig.log.detail("apply") == "the running configuration already matches"


async def test_a_command_line_argument_still_overrides_the_config(rig: Rig) -> None:
    # The node was started with -counter limit 5: a boot with the new sys.config keeps 5.
    args = (OK, [["limit", "5"]])
    running = [(GREETING, "hi"), (LIMIT, 5)]
    parsed = [answer("erl_scan:string", ["limit"], (OK, [(Atom("atom"), 1, LIMIT)], 1)),
              answer("erl_parse:parse_term", [[(Atom("atom"), 1, LIMIT), (Atom("dot"), 1)]],
                     (OK, LIMIT)),
              answer("erl_scan:string", ["5"], (OK, [(Atom("integer"), 1, 5)], 1)),
              answer("erl_parse:parse_term", [[(Atom("integer"), 1, 5), (Atom("dot"), 1)]],
                     (OK, 5))]
    rig.expect(preflight(), sys_config((COUNTER, [(GREETING, "hi"), (LIMIT, 10)])),
               loaded([(COUNTER, running)], app(COUNTER, [], running, args, parsed)))
    result = await rig.run()

    assert (result.outcome, result.config_changes) == (SUCCEEDED, ())


async def test_an_included_config_file_is_read_and_merged(rig: Rig) -> None:
    extra = f"{ROOT}/releases/0.0.2/extra.config"
    running = [(GREETING, "hi"), (LIMIT, 5)]
    rig.expect(preflight(), sys_config("extra", (COUNTER, [(GREETING, "hi")])),
               answer("filelib:is_regular", [extra], True),
               answer("file:consult", [extra], (OK, [[(COUNTER, [(LIMIT, 7)])]])),
               loaded([(COUNTER, running)], app(COUNTER, [], running)),
               answer("application_controller:prep_config_change", [], PREP),
               answer("application:set_env", [[(COUNTER, [(LIMIT, 7)])], PERSISTENT], OK),
               answer("application_controller:config_change", [PREP], OK))
    result = await rig.run()

    assert result.outcome == SUCCEEDED
    assert result.config_changes == (ConfigChange("counter", "limit", "changed"),)
    assert rig.log.detail("read_config") == f"read {SYS_CONFIG}, {extra}"


async def test_a_refused_config_change_puts_the_old_environment_back(rig: Rig) -> None:
    refused = (ERROR, [(Atom("module_not_defined"), Atom("stdlib")),  # a library: no callback
                       (COUNTER, Atom("limit_too_high"))])
    rig.expect(counter_changes(), apply_forward(refused), apply_back())
    result = await rig.run()

    assert result.outcome == ROLLED_BACK
    assert result.error == ("config_change/3 refused the new config: [{counter,limit_too_high}]; "
                            "the previous environment is back. Fix the config (or the callback) "
                            "and reload again")
    assert rig.log.ended()[-1] == ("apply", "failed")
    assert rig.log.detail("apply") == result.error


async def test_a_library_without_a_callback_is_no_refusal(rig: Rig) -> None:
    rig.expect(counter_changes(),
               apply_forward((ERROR, [(Atom("module_not_defined"), Atom("stdlib"))])))
    result = await rig.run()

    assert (result.outcome, result.error) == (SUCCEEDED, "")


async def test_a_refusal_whose_restore_is_refused_too_is_failed(rig: Rig) -> None:
    rig.expect(counter_changes(), apply_forward((ERROR, Atom("limit_too_high"))),
               apply_back((ERROR, Atom("no_way_back"))))
    result = await rig.run()

    assert result.outcome == FAILED
    assert result.error == ("config_change/3 refused the new config: limit_too_high; restoring "
                            "the previous environment was refused too: no_way_back. The "
                            "environment is the previous one; check the applications")


async def test_a_sys_config_that_does_not_parse_stops_before_the_diff(rig: Rig) -> None:
    reason = (3, Atom("erl_parse"), ["syntax error before: ", "'}'"])
    rig.expect(preflight(), answer("file:consult", [SYS_CONFIG], (ERROR, reason)),
               answer("file:format_error", [reason], "3: syntax error before: '}'"),
               answer("lists:flatten", ["3: syntax error before: '}'"],
                      "3: syntax error before: '}'"))
    result = await rig.run()

    assert result.outcome == FAILED_UNCHANGED
    assert result.error == (f"cannot read {SYS_CONFIG}: line 3: syntax error before: '}}'; "
                            "nothing was applied. Fix the file and run relctl reload-config again")
    assert rig.log.ended() == [("preflight", "succeeded"), ("read_config", "failed")]


async def test_an_entry_that_is_not_an_application_is_refused(rig: Rig) -> None:
    rig.expect(preflight(), sys_config((COUNTER, [(LIMIT, 7)]), 42))
    result = await rig.run()

    assert result.outcome == FAILED_UNCHANGED
    assert result.error == (f"entry 2 of {SYS_CONFIG} is neither {{Application, [{{Key, Value}}]}} "
                            "nor a file name: 42; nothing was applied")


async def test_a_node_without_a_running_release_has_nothing_to_reload(rig: Rig) -> None:
    rig.expect(which_releases(("0.0.1", "old")))
    result = await rig.run()

    assert result.outcome == FAILED_UNCHANGED
    assert result.error == (f"{NODE} runs no release known to release_handler; nothing to "
                            "reload")
    assert rig.log.ended() == [("preflight", "failed")]


async def test_converge_applies_the_target_config_as_an_upgrade_step(rig: Rig) -> None:
    """The upgrade's runtime_config step: the same read, diff and apply, on a path it is given."""
    rig.expect(sys_config(NEW_CONFIG),
               loaded(BOOTED, app(COUNTER, DEFAULTS, RUNNING)), apply_forward())
    changes, text = await rig.reload.converge(SYS_CONFIG)

    assert changes == CHANGES
    assert text == f"{DIFF}; config_change/3 called for counter"
    rig.node.assert_done()
