%% A child counter 0.0.3 adds and 0.0.4 removes again (module and all).
-module(counter_extra).
-behaviour(gen_server).

-export([start_link/0, init/1, handle_call/3, handle_cast/2]).

start_link() ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

init([]) ->
    {ok, extra}.

handle_call(_Msg, _From, S) ->
    {reply, S, S}.

handle_cast(_Msg, S) ->
    {noreply, S}.
