%% The special process of counter 0.0.4 (see 0.0.3): started with proc_lib, looping in this
%% module (no OTP behaviour), answering system messages through sys, so that
%% release_handler can suspend it and change its code with
%% system_code_change/4. `load_module' would leave it looping in the old
%% code, which the next purge kills.
-module(counter_sp).
-vsn("0.0.4").

-export([start_link/0, tick/0, callback/0, init/1]).
-export([system_continue/3, system_terminate/4, system_code_change/4]).

start_link() ->
    proc_lib:start_link(?MODULE, init, [self()]).

tick() ->
    Ref = make_ref(),
    ?MODULE ! {tick, self(), Ref},
    receive {Ref, N} -> N after 5000 -> exit(timeout) end.

%% A fun made by this module's code: kept in a process's state, it outlives a code change
%% and fails with badfun once the old code is purged (relctl's verify names its holder).
callback() ->
    fun(N) -> N + 1 end.

init(Parent) ->
    register(?MODULE, self()),
    proc_lib:init_ack({ok, self()}),
    loop(Parent, #{ticks => 0}).

loop(Parent, #{ticks := N} = S) ->
    receive
        {system, From, Msg} ->
            sys:handle_system_msg(Msg, From, Parent, ?MODULE, [], S);
        {tick, From, Ref} ->
            %% 0.0.4 counts by two: a test tells the new code from the old.
            From ! {Ref, N + 2},
            loop(Parent, S#{ticks := N + 2})
    end.

system_continue(Parent, _Debug, S) ->
    loop(Parent, S).

system_terminate(Reason, _Parent, _Debug, _S) ->
    exit(Reason).

%% Called by sys:change_code/4 with the old module's -vsn going up (the
%% state remembers it, so a test sees that it ran rather than a restart),
%% and with {down, Vsn} going down, before the old code is loaded: then it
%% gives the state the old code knows.
system_code_change(S, _Module, {down, _Vsn}, _Extra) ->
    {ok, maps:with([ticks], S)};
system_code_change(S, _Module, OldVsn, _Extra) ->
    {ok, S#{upgraded_from => OldVsn}}.
