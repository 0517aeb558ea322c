%% Top supervisor of counter 0.0.3: two children more than 0.0.1's.
-module(counter_sup).
-behaviour(supervisor).

-export([start_link/0, init/1]).

start_link() ->
    supervisor:start_link({local, ?MODULE}, ?MODULE, []).

init([]) ->
    Flags = #{strategy => one_for_one, intensity => 5, period => 10},
    {ok, {Flags, [worker(counter), worker(counter_sp, ticker), worker(counter_extra, extra)]}}.

%% release_handler finds the processes to suspend and code_change through
%% the `modules' of child specs, so each names its module.
worker(Mod) ->
    worker(Mod, Mod).

worker(Mod, Id) ->
    #{id => Id, start => {Mod, start_link, []}, restart => permanent, shutdown => 5000,
      type => worker, modules => [Mod]}.
