%% Top supervisor of the counter application.
-module(counter_sup).
-behaviour(supervisor).

-export([start_link/0, init/1]).

start_link() ->
    supervisor:start_link({local, ?MODULE}, ?MODULE, []).

init([]) ->
    Flags = #{strategy => one_for_one, intensity => 5, period => 10},
    %% release_handler finds the processes to suspend and code_change
    %% through the `modules' of child specs, so it has to name counter.
    Counter = #{id => counter,
                start => {counter, start_link, []},
                restart => permanent,
                shutdown => 5000,
                type => worker,
                modules => [counter]},
    {ok, {Flags, [Counter]}}.
