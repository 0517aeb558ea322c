%% -*- erlang -*-
%%! -hidden
%% The peer for bench/versions_cli.py: what relx's `bin/<rel> versions` does per invocation.
%% Starts a VM, joins as a hidden node (cookie from $HOME/.erlang.cookie), calls
%% release_handler:which_releases/0, prints a relx-style list, exits. Arg: Target node.
main([Target]) ->
    {ok, _} = net_kernel:start([list_to_atom("relx_versions_" ++ os:getpid() ++ "@localhost"), shortnames]),
    Node = list_to_atom(Target),
    case rpc:call(Node, release_handler, which_releases, []) of
        {badrpc, Reason} ->
            io:format(standard_error, "versions failed: ~p~n", [Reason]),
            halt(1);
        Releases ->
            io:format("Installed versions:~n"),
            [io:format("* ~s\t~s~n", [Vsn, Status]) || {_Name, Vsn, _Libs, Status} <- Releases],
            halt(0)
    end.
