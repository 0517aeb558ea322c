%% The counter process of release 0.0.2: the "after" side of the hot
%% upgrade. The state grows from a bare integer into a map that also
%% remembers where it was migrated from, so a test can tell that
%% code_change/3 really ran (and which way) rather than a restart.
-module(counter).
-behaviour(gen_server).

%% release_handler passes the -vsn of the loaded module to code_change/3
%% ("0.0.1" going up, {down, "0.0.1"} going down), so keep it in step
%% with counter.app and counter.appup.
-vsn("0.0.2").

-export([start_link/0, get/0, incr/0, health/0, greeting/0]).
-export([init/1, handle_call/3, handle_cast/2, code_change/3]).

-type state() :: #{count := non_neg_integer(),
                   upgraded_from := none | string()}.

start_link() ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

-spec get() -> non_neg_integer().
get() ->
    gen_server:call(?MODULE, get).

%% Adds the configured step (1 unless counter's env says otherwise), read
%% at every call: a reloaded config changes what incr does, live.
-spec incr() -> pos_integer().
incr() ->
    gen_server:call(?MODULE, incr).

%% Read from the application environment at every call.
-spec greeting() -> string().
greeting() ->
    application:get_env(counter, greeting, "hello").

%% The health probe relctl's agent may be configured with: ok while the
%% counter answers, unless the node was flagged unhealthy with
%% persistent_term:put({counter, healthy}, false), which (unlike the
%% application environment) survives an upgrade: how tests fail the gate.
-spec health() -> ok | {error, unhealthy}.
health() ->
    _ = ?MODULE:get(),
    case persistent_term:get({counter, healthy}, true) of
        true -> ok;
        false -> {error, unhealthy}
    end.

-spec init([]) -> {ok, state()}.
init([]) ->
    {ok, #{count => 0, upgraded_from => none}}.

handle_call(get, _From, #{count := N} = S) ->
    {reply, N, S};
handle_call(incr, _From, #{count := N} = S) ->
    Step = application:get_env(counter, step, 1),
    {reply, N + Step, S#{count := N + Step}}.

handle_cast(_Msg, S) ->
    {noreply, S}.

%% Up from 0.0.1: the integer count is carried over into the map.
code_change("0.0.1", N, _Extra) when is_integer(N) ->
    {ok, #{count => N, upgraded_from => "0.0.1"}};
%% Down to 0.0.1: this clause runs in *this* module before the old code
%% is loaded (counter is a dynamic module), so 0.0.2 must know how to
%% shape the state for its predecessor. Only the count survives.
code_change({down, "0.0.1"}, #{count := N}, _Extra) ->
    {ok, N};
%% Reloading 0.0.2 over itself leaves an already migrated state alone.
code_change(_OldVsn, #{count := _} = S, _Extra) ->
    {ok, S}.
