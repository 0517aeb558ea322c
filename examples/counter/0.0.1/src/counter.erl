%% The counter process of release 0.0.1: the "before" side of the hot
%% upgrade exercised by relctl's tests. Its state is a bare integer so
%% that a change of state shape in 0.0.2 is easy to observe with
%% sys:get_state/1.
-module(counter).
-behaviour(gen_server).

%% release_handler hands this value (read from the loaded beam) to the
%% new module's code_change/3 as OldVsn, so it must match the appup.
-vsn("0.0.1").

-export([start_link/0, get/0, incr/0, health/0]).
-export([init/1, handle_call/3, handle_cast/2, code_change/3]).

start_link() ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

-spec get() -> non_neg_integer().
get() ->
    gen_server:call(?MODULE, get).

-spec incr() -> pos_integer().
incr() ->
    gen_server:call(?MODULE, incr).

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

init([]) ->
    {ok, 0}.

handle_call(get, _From, N) ->
    {reply, N, N};
handle_call(incr, _From, N) ->
    {reply, N + 1, N + 1}.

%% Nothing calls cast; crashing on one would only hide a caller's bug.
handle_cast(_Msg, N) ->
    {noreply, N}.

%% 0.0.1 is the oldest version: nothing to migrate from. A reload of the
%% same version keeps the state as it is.
code_change(_OldVsn, N, _Extra) ->
    {ok, N}.
