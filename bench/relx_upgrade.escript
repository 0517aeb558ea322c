%% -*- erlang -*-
%%! -hidden
%% The peer for bench/upgrade.py: what relx's install_upgrade.escript does per command, in one
%% new VM (hidden node, cookie from $HOME/.erlang.cookie).
%%   relx_upgrade.escript Target relx upgrade VSN TARBALL UNPACK_NAME
%%       copy TARBALL to releases/UNPACK_NAME.tar.gz, unpack_release, check_install_release,
%%       install_release(VSN, [{update_paths, true}]), make_permanent
%%   relx_upgrade.escript Target relx downgrade VSN
%%       install_release(VSN), make_permanent
%%   relx_upgrade.escript Target tc upgrade|downgrade ...   (same calls, each timed by
%%       timer:tc inside the node; prints {"release_handler_us": N})
main([Target, Mode, Op, Vsn | Rest]) ->
    {ok, _} = net_kernel:start([list_to_atom("relx_upgrade_" ++ os:getpid() ++ "@localhost"), shortnames]),
    Node = list_to_atom(Target),
    Calls = case {Op, Rest} of
        {"upgrade", [Tarball, UnpackName]} ->
            Root = rpc:call(Node, code, root_dir, []),
            {ok, _} = file:copy(Tarball, filename:join([Root, "releases", UnpackName ++ ".tar.gz"])),
            [{unpack_release, [UnpackName]}, {check_install_release, [Vsn]},
             {install_release, [Vsn, [{update_paths, true}]]}, {make_permanent, [Vsn]}];
        {"downgrade", []} ->
            [{install_release, [Vsn]}, {make_permanent, [Vsn]}]
    end,
    Total = lists:sum([call(Node, Mode, F, A) || {F, A} <- Calls]),
    case Mode of
        "tc" -> io:format("{\"release_handler_us\": ~p}~n", [Total]);
        "relx" -> io:format("~s ~s done~n", [Op, Vsn])
    end,
    halt(0).

call(Node, "relx", F, A) ->
    check(F, rpc:call(Node, release_handler, F, A, infinity)),
    0;
call(Node, "tc", F, A) ->
    {Us, Result} = rpc:call(Node, timer, tc, [release_handler, F, A], infinity),
    check(F, Result),
    Us.

check(_, ok) -> ok;
check(_, {ok, _}) -> ok;
check(_, {ok, _, _}) -> ok;
check(F, Other) ->
    io:format(standard_error, "~p failed: ~p~n", [F, Other]),
    halt(1).
