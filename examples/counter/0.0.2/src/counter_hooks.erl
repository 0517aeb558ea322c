%% Upgrade hooks for relctl's tests: functions an agent can be configured
%% to call before and after install_release ([[nodes.hooks]]). Each call
%% is recorded with the release that runs at that moment, so a test can
%% tell which hooks ran, in which order, and on which side of the
%% install. The module is the same in every version of counter (an
%% unchanged module needs no appup instruction).
-module(counter_hooks).

-export([run/1, run/2, calls/0, reset/0]).

-type name() :: term().

%% A hook that returns ok, or what the test asked for (see reply/2).
-spec run(name()) -> term().
run(Name) ->
    reply(Name, ok).

%% A hook that returns {ok, Tag}, or what the test asked for.
-spec run(name(), term()) -> term().
run(Name, Tag) ->
    reply(Name, {ok, Tag}).

%% The calls so far, oldest first: [{Name, RunningVersion}].
-spec calls() -> [{name(), string()}].
calls() ->
    persistent_term:get({?MODULE, calls}, []).

-spec reset() -> ok.
reset() ->
    _ = persistent_term:erase({?MODULE, calls}),
    ok.

%% persistent_term (unlike the application environment) survives an
%% upgrade, so a test flags a hook once, before the operation:
%%   persistent_term:put({counter_hooks, Name}, Behaviour)
%% with Behaviour one of {sleep, Ms} (then Default), crash (an
%% exception), {on, Version, Behaviour} (only while Version runs), or
%% any other term, returned instead of Default.
reply(Name, Default) ->
    Running = running_version(),
    persistent_term:put({?MODULE, calls}, calls() ++ [{Name, Running}]),
    behave(persistent_term:get({?MODULE, Name}, Default), Name, Running, Default).

behave({on, Running, Behaviour}, Name, Running, Default) ->
    behave(Behaviour, Name, Running, Default);
behave({on, _Other, _Behaviour}, _Name, _Running, Default) ->
    Default;
behave({sleep, Ms}, _Name, _Running, Default) ->
    timer:sleep(Ms),
    Default;
behave(crash, Name, _Running, _Default) ->
    erlang:error({hook_crashed, Name});
behave(Reply, _Name, _Running, _Default) ->
    Reply.

%% The release the node runs: the current one when an install is not yet
%% permanent, else the permanent one.
running_version() ->
    Releases = release_handler:which_releases(),
    case [V || {_, V, _, current} <- Releases] of
        [Current | _] -> Current;
        [] -> hd([V || {_, V, _, permanent} <- Releases])
    end.
