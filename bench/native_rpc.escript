%% -*- erlang -*-
%%! -hidden
%% The peer for bench/rpc_latency.py: a native hidden Erlang node calling the same function on
%% the same node. Prints one line of JSON. Args: Target Calls Callers PerCaller.
main([Target, Calls, Callers, PerCaller]) ->
    {ok, _} = net_kernel:start([list_to_atom("bench_native_" ++ os:getpid() ++ "@localhost"), shortnames]),
    Node = list_to_atom(Target),
    pong = net_adm:ping(Node),
    Call = fun() -> Node = rpc:call(Node, erlang, node, []) end,
    [Call() || _ <- lists:seq(1, 300)],  % warm up
    Seq = lists:sort([timed(Call) || _ <- lists:seq(1, list_to_integer(Calls))]),
    Rex = fun() -> Node = gen_server:call({rex, Node}, {call, erlang, node, [], user}) end,
    RexSeq = lists:sort([timed(Rex) || _ <- lists:seq(1, list_to_integer(Calls))]),
    N = list_to_integer(Callers), M = list_to_integer(PerCaller),
    Self = self(),
    T0 = erlang:monotonic_time(nanosecond),
    Pids = [spawn_link(fun() -> [Call() || _ <- lists:seq(1, M)], Self ! {done, self()} end)
            || _ <- lists:seq(1, N)],
    [receive {done, P} -> ok end || P <- Pids],
    Elapsed = erlang:monotonic_time(nanosecond) - T0,
    io:format("{\"p50_us\": ~.3f, \"p99_us\": ~.3f, \"rex_p50_us\": ~.3f, \"calls_per_s\": ~.1f}~n",
              [pct(Seq, 0.50), pct(Seq, 0.99), pct(RexSeq, 0.50), N * M / (Elapsed / 1.0e9)]).

timed(F) ->
    T0 = erlang:monotonic_time(nanosecond),
    F(),
    (erlang:monotonic_time(nanosecond) - T0) / 1000.

pct(Sorted, P) -> lists:nth(max(1, round(P * length(Sorted))), Sorted).
